"""Small audio I/O helpers shared by the Table I example scripts (16 kHz mono float32)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.fft import next_fast_len

SR = 16_000


def read(path: str | Path) -> np.ndarray:
    """Read an audio file as mono float32 at 16 kHz (resampling with soxr when needed)."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return to_mono_16k(wav, sr)


def read_bytes(data: bytes) -> np.ndarray:
    """Decode WAV/FLAC bytes (e.g. a subprocess's stdout) as mono float32 at 16 kHz."""
    wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return to_mono_16k(wav, sr)


def to_mono_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """Average channels of a (time, channels) array and resample to 16 kHz."""
    mono = wav.mean(axis=1).astype(np.float32)
    if sr != SR:
        mono = soxr.resample(mono, sr, SR, quality="HQ").astype(np.float32)
    return mono


def write(path: str | Path, wav: np.ndarray) -> None:
    """Write mono 16 kHz FLAC (16-bit), clipping to [-1, 1]."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), SR, format="FLAC", subtype="PCM_16")


def run_bytes(cmd: list[str]) -> bytes:
    """Run a command and return its stdout, raising with its stderr on failure."""
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return proc.stdout


def trim_silence(wav: np.ndarray, threshold_db: float = -40.0, frame: int = 160) -> np.ndarray:
    """Cut leading/trailing frames whose RMS is `threshold_db` below the loudest frame."""
    n = len(wav) // frame
    if n == 0:
        return wav
    rms = np.sqrt((wav[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > threshold_db)
    if len(loud) == 0:
        return wav
    return wav[loud[0] * frame : (loud[-1] + 1) * frame]


def fit_length(wav: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """Place `wav` at `offset` in a zero array of `length` samples (cropping what overflows)."""
    out = np.zeros(length, dtype=np.float32)
    piece = wav[: max(0, length - offset)]
    out[offset : offset + len(piece)] = piece
    return out


def add_noise(wav: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """Add white noise `snr_db` below the signal's RMS (synthetic audio has digital silence)."""
    rms = float(np.sqrt(np.mean(wav**2)) + 1e-8)
    noise = rng.standard_normal(len(wav)).astype(np.float32) * rms * 10 ** (-snr_db / 20)
    return (wav + noise).astype(np.float32)


def peak_normalize(wav: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that the largest absolute sample equals `peak`."""
    m = float(np.abs(wav).max())
    return wav if m == 0 else (wav * (peak / m)).astype(np.float32)


def degrade(
    wav: np.ndarray,
    rng: np.random.Generator,
    snr_db: tuple[float, float] = (5.0, 25.0),
    reverb_prob: float = 0.5,
) -> np.ndarray:
    """Random "recording conditions": EQ (tilt, low/high-pass), maybe reverb, coloured noise.

    Applied to every probe clip (and, on the fly, to half of the pretraining crops) so that
    plain spectral templates (the FBANK baseline) stop being enough. One FFT pass.
    """
    n = len(wav)
    ir = np.ones(1)
    if rng.random() < reverb_prob:
        rt60 = rng.uniform(0.1, 0.6)
        t = np.arange(int(rt60 * SR)) / SR
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        ir[0] = 1.0 / rng.uniform(0.2, 1.0)  # direct path vs reverberant energy
        ir /= np.sqrt((ir**2).sum())
    size = next_fast_len(n + len(ir))
    freqs = np.fft.rfftfreq(size, 1 / SR)
    octaves = np.log2(np.maximum(freqs, 50.0) / 1000.0)
    lowpass, highpass = rng.uniform(2500.0, 8000.0), rng.uniform(40.0, 300.0)
    gain = (
        10 ** (rng.uniform(-4.0, 4.0) * octaves / 20)
        / np.sqrt(1 + (freqs / lowpass) ** 8)
        / np.sqrt(1 + (highpass / np.maximum(freqs, 1.0)) ** 4)
    )
    out = np.fft.irfft(np.fft.rfft(wav, size) * np.fft.rfft(ir, size) * gain, size)[:n]
    colour = rng.uniform(0.0, 1.0)  # 0 = white, 1 = pink
    spec = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    noise = np.fft.irfft(spec / np.maximum(freqs, 20.0) ** (colour / 2), size)[:n]
    rms = np.sqrt(np.mean(out**2)) + 1e-8
    noise *= rms / (np.sqrt(np.mean(noise**2)) + 1e-12) * 10 ** (-rng.uniform(*snr_db) / 20)
    return (out + noise).astype(np.float32)
