"""Synthetic calibration audio, for demos and tests when no recordings are at hand.

Deterministic "music" (notes of a scale with harmonics and envelopes) and "speech-like" sounds
(a glottal pulse train through moving formant resonances, modulated at a syllable rate).

Example:
    >>> import tempfile
    >>> files = write_clips(tempfile.mkdtemp(), count=2, seconds=0.5)
    >>> len(files)
    2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["music_clip", "speechlike_clip", "write_clips"]

RATE = 16000


def music_clip(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """Notes of a major scale, each with a few harmonics and an attack-decay envelope."""
    n = int(seconds * rate)
    out = np.zeros(n)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    base = 48 + int(rng.integers(0, 12))
    t0 = 0
    while t0 < n:
        dur = int(rate * rng.choice([0.125, 0.25, 0.5]))
        pitch = base + int(rng.choice(scale)) + 12 * int(rng.integers(0, 2))
        f = 440.0 * 2 ** ((pitch - 69) / 12)
        t = np.arange(min(dur, n - t0)) / rate
        env = np.minimum(1.0, t * 200) * np.exp(-t * rng.uniform(2, 8))
        tone = sum(np.sin(2 * np.pi * f * k * t) / k ** rng.uniform(1, 2) for k in range(1, 6))
        out[t0 : t0 + len(t)] += env * tone
        t0 += dur
    return (0.3 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def speechlike_clip(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """A pulse train at a wandering pitch, through two moving formants, in syllable bursts."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = np.cumsum(f0 / rate)
    source = (np.diff(np.floor(phase), prepend=0) > 0).astype(float) + 0.02 * rng.normal(size=n)
    out = np.zeros(n)
    for lo, hi in ((300, 900), (900, 2500)):
        fc = rng.uniform(lo, hi) + 0.3 * (hi - lo) * np.sin(2 * np.pi * rng.uniform(1, 4) * t)
        r = 0.97
        y1 = y2 = 0.0
        for i in range(n):  # a two-pole resonator with a moving centre
            c = 2 * r * np.cos(2 * np.pi * fc[i] / rate)
            y = source[i] + c * y1 - r * r * y2
            out[i] += y
            y1, y2 = y, y1
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t)) ** 2
    out *= syllables
    return (0.3 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def write_clips(
    folder: str | Path, *, count: int = 24, seconds: float = 2.0, seed: int = 0
) -> list[Path]:
    """Write ``count`` clips (alternately music and speech-like) as 16 kHz FLAC files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        kind = "music" if i % 2 == 0 else "speech"
        clip = music_clip(seconds, rng) if kind == "music" else speechlike_clip(seconds, rng)
        path = folder / f"{kind}-{i:03d}.flac"
        sf.write(path, clip, RATE)
        files.append(path)
    return files
