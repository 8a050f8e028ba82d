"""Frame-level audio features on the encoders' 50 Hz grid (torch only, no torchaudio).

The HuBERT feature extractor used here (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) sees
400 samples per frame with a hop of 320, so frame i covers samples [320 i, 320 i + 400) and
`n_frames(L) = (L - 400) // 320 + 1`. Every feature below is computed on exactly that grid
(windows centred on sample 320 i + 200), so frame-level targets line up with encoder frames.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SR = 16_000
HOP = 320
RECEPTIVE_FIELD = 400


def n_frames(n_samples: int) -> int:
    """Number of encoder frames for a waveform of `n_samples` samples."""
    return max(0, (n_samples - RECEPTIVE_FIELD) // HOP + 1)


def normalize_wave(wav: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per clip along the last axis (the encoders' input convention)."""
    wav = wav - wav.mean(dim=-1, keepdim=True)
    return wav / torch.sqrt(wav.var(dim=-1, keepdim=True) + 1e-7)


def power_spectrogram(wav: torch.Tensor, n_fft: int) -> torch.Tensor:
    """|STFT|^2 with a Hann window of `n_fft` centred on each frame: (..., frames, n_fft//2+1)."""
    frames = n_frames(wav.shape[-1])
    left = n_fft // 2 - RECEPTIVE_FIELD // 2
    x = torch.nn.functional.pad(wav, (max(left, 0), n_fft))[..., max(-left, 0) :]
    window = torch.hann_window(n_fft, dtype=wav.dtype, device=wav.device)
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]), n_fft, HOP, window=window, center=False, return_complex=True
    )
    power = spec.abs().pow(2).transpose(1, 2)[:, :frames]
    return power.reshape(*wav.shape[:-1], frames, n_fft // 2 + 1)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


def _triangles(centers_hz: np.ndarray, n_fft: int, min_width_hz: float = 0.0) -> torch.Tensor:
    """Triangular filters (bins x filters) with peaks at centers[1:-1] and feet at neighbours."""
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), len(centers_hz) - 2), dtype=np.float32)
    for j in range(1, len(centers_hz) - 1):
        lo, mid, hi = centers_hz[j - 1], centers_hz[j], centers_hz[j + 1]
        lo, hi = min(lo, mid - min_width_hz), max(hi, mid + min_width_hz)
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, j - 1] = np.clip(np.minimum(up, down), 0.0, None)
    return torch.from_numpy(fb)


@functools.cache
def mel_filterbank(n_mels: int, n_fft: int, fmin: float = 20.0, fmax: float = 8000.0):
    """Mel-spaced triangular filterbank, (n_fft//2+1, n_mels)."""
    mels = np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2)
    return _triangles(_mel_to_hz(mels), n_fft)


@functools.cache
def semitone_filterbank(n_bins: int = 84, fmin: float = 55.0, n_fft: int = 2048):
    """Semitone-spaced triangular filters from `fmin` (a CQT-like log-frequency axis)."""
    centers = fmin * 2.0 ** ((np.arange(n_bins + 2) - 1) / 12.0)
    return _triangles(centers, n_fft, min_width_hz=1.5 * SR / n_fft)


@functools.cache
def chroma_filterbank(n_fft: int = 2048, fmin: float = 55.0, fmax: float = 5000.0):
    """Map spectrum bins to 12 pitch classes (Gaussian in cents around each class, sigma 1/2)."""
    freqs = np.linspace(0, SR / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), 12), dtype=np.float32)
    ok = (freqs >= fmin) & (freqs <= fmax)
    midi = 69 + 12 * np.log2(freqs[ok] / 440.0)
    for pc in range(12):
        dist = (midi - pc + 6) % 12 - 6
        fb[ok, pc] = np.exp(-0.5 * (dist / 0.5) ** 2)
    return torch.from_numpy(fb)


@functools.cache
def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II, (n_in, n_out)."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    m = np.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    m[:, 0] /= math.sqrt(2.0)
    return torch.from_numpy(m.astype(np.float32))


def deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas along the frame axis (-2) with edge replication."""
    t = x.shape[-2]
    idx = torch.arange(t)
    num = sum(
        k * (x[..., (idx + k).clamp(0, t - 1), :] - x[..., (idx - k).clamp(0, t - 1), :])
        for k in range(1, width + 1)
    )
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def log_mel(wav: torch.Tensor, n_mels: int = 80, n_fft: int = 400) -> torch.Tensor:
    """Log mel filterbank energies ("FBANK"), (..., frames, n_mels)."""
    return torch.log(power_spectrogram(wav, n_fft) @ mel_filterbank(n_mels, n_fft) + 1e-6)


def mfcc(wav: torch.Tensor, n_mfcc: int = 13, n_mels: int = 40) -> torch.Tensor:
    """MFCC + deltas + delta-deltas (HuBERT's first-iteration targets), (..., frames, 3*n_mfcc)."""
    c = log_mel(wav, n_mels) @ dct_matrix(n_mels, n_mfcc)
    d = deltas(c)
    return torch.cat([c, d, deltas(d)], dim=-1)


def chroma(wav: torch.Tensor, n_fft: int = 2048) -> torch.Tensor:
    """12-bin chroma, each frame scaled to unit maximum, (..., frames, 12)."""
    c = power_spectrogram(wav, n_fft) @ chroma_filterbank(n_fft)
    c = torch.sqrt(c)
    return c / (c.amax(dim=-1, keepdim=True) + 1e-6)


def cqt(wav: torch.Tensor, n_bins: int = 84, n_fft: int = 2048) -> torch.Tensor:
    """Log energies on a semitone axis from A1 (55 Hz), a cheap CQT stand-in, (..., frames, 84)."""
    bank = semitone_filterbank(n_bins, 55.0, n_fft)
    return torch.log(power_spectrogram(wav, n_fft) @ bank + 1e-6)
