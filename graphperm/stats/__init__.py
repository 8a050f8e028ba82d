"""Calibration statistics: the site runner, streaming accumulation, the calibration stage.

Example:
    >>> from graphperm.stats import SiteStats
    >>> SiteStats.empty(4, models=3).pairs
    ((0, 1), (0, 2))
"""

from __future__ import annotations

from graphperm.stats.accumulate import SiteStats, reference_pairs
from graphperm.stats.calibrate import calibrate
from graphperm.stats.collect import FrameLayout, Statistics, collect, frame_layout, valid_frames
from graphperm.stats.runner import SiteRunner

__all__ = [
    "FrameLayout",
    "SiteRunner",
    "SiteStats",
    "Statistics",
    "calibrate",
    "collect",
    "frame_layout",
    "reference_pairs",
    "valid_frames",
]
