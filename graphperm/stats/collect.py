"""One pass over the calibration data: both models on each batch, statistics at every site.

Permutations preserve function, so aligning one group never changes the activations at another
group's sites: all statistics come from a single pass, with no re-runs per layer and no stored
activations. Padded frames are dropped before they reach the statistics.

Example:
    >>> from graphperm.trace import load_model, trace              # doctest: +SKIP
    >>> stats = collect(analysis, plan.sites(), state_a, state_b, batches)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from graphperm.analysis import Analysis, Site
from graphperm.errors import CalibrationError
from graphperm.stats.accumulate import NonFinite, SiteStats
from graphperm.stats.adapter import ModelBatch
from graphperm.stats.runner import SiteRunner

__all__ = ["Statistics", "collect", "frame_layout"]

log = logging.getLogger(__name__)


@dataclass
class Statistics:
    """Statistics per site (``(value key, dim)``), and how much data they saw."""

    sites: dict[tuple[str, int], SiteStats] = field(default_factory=dict)
    seconds: float = 0.0
    batches: int = 0
    elapsed: float = 0.0

    def merge(self, other: Statistics) -> Statistics:
        keys = set(self.sites) | set(other.sites)
        merged = {}
        for k in keys:
            a, b = self.sites.get(k), other.sites.get(k)
            merged[k] = a.merge(b) if a is not None and b is not None else (a or b)
        return Statistics(
            merged,
            self.seconds + other.seconds,
            self.batches + other.batches,
            self.elapsed + other.elapsed,
        )


@dataclass(frozen=True)
class _Layout:
    channel: int
    batch: int | None
    time: int | None


def frame_layout(analysis: Analysis, site: Site) -> _Layout:
    """Which dims of a site's value are the channels, the batch and the time (if unique)."""
    c = analysis.coupling
    shape = c.tensors[site.key].shape
    user = next(iter(c.inputs), None)
    batch_cls = c.cls(user, 0) if user is not None else None
    dims = c.classes(site.key)
    batch = next((d for d, k in enumerate(dims) if k == batch_cls and d != site.dim), None)
    rest = [d for d in range(len(shape)) if d not in (site.dim, batch) and shape[d] > 1]
    return _Layout(site.dim, batch, rest[0] if len(rest) == 1 else None)


def collect(
    analysis: Analysis,
    sites: list[Site],
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    batches: Iterable[ModelBatch],
    *,
    total_seconds: float | None = None,
    progress: bool = False,
    precision: str = "fp32",
    max_frames_per_row: int | None = None,
) -> Statistics:
    """Run A and B on every batch and accumulate statistics at ``sites``.

    ``precision`` is ``fp64`` (exact reference), ``fp32``, ``bf16`` (bf16 cross products) or
    ``auto`` (bf16 for sites of 1024+ channels when the hardware has fast bf16, else fp32).
    ``max_frames_per_row`` subsamples a site's time axis evenly to at most that many frames per
    batch row (the high-rate conv sites); ``None`` keeps every frame.
    """
    keys = sorted({s.key for s in sites}, key=list(analysis.coupling.tensors).index)
    runner = SiteRunner(analysis.traced.program, keys)
    layouts = {(s.key, s.dim): frame_layout(analysis, s) for s in sites}
    where = {(s.key, s.dim): s.module or s.key for s in sites}
    shapes = {k: analysis.coupling.tensors[k[0]].shape for k in layouts}
    accum = torch.float64 if precision == "fp64" else torch.float32
    stats = Statistics({k: SiteStats.empty(shapes[k][k[1]], accum) for k in layouts})
    products = {k: _product_dtype(precision, shapes[k][k[1]]) for k in layouts}
    strides = {
        k: _stride(shapes[k][lay.time], max_frames_per_row) if lay.time is not None else 1
        for k, lay in layouts.items()
    }
    start = time.perf_counter()
    bar = tqdm(
        total=total_seconds,
        unit="s",
        desc="statistics",
        disable=not progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
    )
    with bar:
        for batch in batches:
            acts_a = dict(zip(keys, runner(state_a, batch.inputs)))
            acts_b = dict(zip(keys, runner(state_b, batch.inputs)))
            for k, layout in layouts.items():
                a = _frames(acts_a[k[0]], layout, batch.valid, strides[k])
                b = _frames(acts_b[k[0]], layout, batch.valid, strides[k])
                try:
                    stats.sites[k].update(a, b, product=products[k])
                except NonFinite as err:
                    raise CalibrationError(
                        f"model {err} produced NaN or inf activations at {where[k]} ({k[0]}); "
                        "check the model's weights and the input audio"
                    ) from None
            del acts_a, acts_b
            stats.seconds += batch.seconds
            stats.batches += 1
            bar.update(batch.seconds)
    stats.elapsed = time.perf_counter() - start
    return stats


def _product_dtype(precision: str, channels: int) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and channels >= 1024 and fast_bf16()):
        return torch.bfloat16
    return None


@functools.cache
def fast_bf16() -> bool:
    """Whether this machine multiplies bf16 matrices faster than fp32 (AVX512-BF16, AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _stride(steps: int, max_frames: int | None) -> int:
    return 1 if not max_frames or steps <= max_frames else -(-steps // max_frames)


def _frames(t: torch.Tensor, layout: _Layout, valid: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """(frames, channels) of the real (unpadded) frames of site value ``t``, every ``stride``-th
    along time."""
    full = t.shape[layout.time] if layout.time is not None else 1
    if stride > 1 and layout.time is not None:
        t = t.index_select(layout.time, torch.arange(0, t.shape[layout.time], stride))
    x = t.movedim(layout.channel, -1)
    channels = x.shape[-1]
    b = layout.batch if layout.batch is None or layout.batch < layout.channel else layout.batch - 1
    tm = layout.time if layout.time is None or layout.time < layout.channel else layout.time - 1
    if b is None:  # a batch of one (its batch dim has size 1 and no class of its own)
        if tm is None or valid.numel() != 1:
            return x.reshape(-1, channels)
        keep = torch.arange(x.shape[tm]) * stride < _valid_steps(valid[:1], full)
        return x.index_select(tm, keep.nonzero().squeeze(1)).reshape(-1, channels)
    rows = x.shape[b]
    frac = valid[:rows] if valid.numel() >= rows else torch.ones(rows)
    shape = [1] * (x.ndim - 1)
    shape[b] = rows
    if tm is None:
        keep = (frac > 0).reshape(shape).expand(x.shape[:-1])
    else:
        steps = x.shape[tm]
        ok = torch.arange(steps)[None, :] * stride < _valid_steps(frac, full)[:, None]
        shape[tm] = steps
        keep = (ok.T if b > tm else ok).reshape(shape).expand(x.shape[:-1])
    return x[keep]


def _valid_steps(frac: torch.Tensor, steps: int) -> torch.Tensor:
    """Unpadded steps per row, on the site's own (unstrided) time axis of ``steps``."""
    return torch.floor(frac * steps + 1e-6).long()
