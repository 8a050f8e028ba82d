"""Where the work runs: device choice, and handing freed memory back to the OS.

Example:
    >>> resolve_device("cpu")
    'cpu'
"""

from __future__ import annotations

import contextlib
import ctypes

import torch

from graphperm.errors import CalibrationError

__all__ = ["release_memory", "resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when a GPU is usable, else ``cpu``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CalibrationError(
            f"--device {device}: no CUDA GPU is available here; use --device cpu"
        )
    return device


def release_memory() -> None:
    """Hand freed heap memory back to the OS. glibc keeps it otherwise (about 400 MB after
    calibrating HuBERT base), and the solve that follows would start that much higher."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
