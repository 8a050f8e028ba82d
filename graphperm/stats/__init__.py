"""Calibration statistics: input adapters, the site runner, and streaming accumulation."""

from __future__ import annotations

from graphperm.stats.accumulate import SiteStats
from graphperm.stats.adapter import AudioAdapter, ModelBatch
from graphperm.stats.collect import Statistics, collect
from graphperm.stats.runner import SiteRunner

__all__ = ["AudioAdapter", "ModelBatch", "SiteRunner", "SiteStats", "Statistics", "collect"]
