"""Data for calibration: audio files and folders turned into padded, mixed batches.

Example:
    >>> from graphperm.data import CalibrationSet
    >>> calib = CalibrationSet(["speech/", "music/"], sample_rate=16000)  # doctest: +SKIP
"""

from __future__ import annotations

from graphperm.data.audio import AudioBatch, CalibrationSet, Clip
from graphperm.data.sources import check_sources

__all__ = ["AudioBatch", "CalibrationSet", "Clip", "check_sources"]
