"""One pass over the calibration data: both models on each batch, statistics at every site.

Permutations preserve function, so aligning one group never changes the activations at another
group's sites: all statistics come from a single pass, with no re-runs per layer and no stored
activations. Padded frames are dropped before they reach the statistics.

Example:
    >>> from graphperm.trace import load_model, trace              # doctest: +SKIP
    >>> stats = collect(analysis, plan.sites(), state_a, state_b, batches)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from graphperm.analysis import Analysis, Site
from graphperm.errors import CalibrationError
from graphperm.stats.accumulate import SiteStats
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
    dtype: torch.dtype = torch.float32,
) -> Statistics:
    """Run A and B on every batch and accumulate statistics at ``sites``."""
    keys = sorted({s.key for s in sites}, key=list(analysis.coupling.tensors).index)
    runner = SiteRunner(analysis.traced.program, keys)
    layouts = {(s.key, s.dim): frame_layout(analysis, s) for s in sites}
    where = {(s.key, s.dim): s.module or s.key for s in sites}
    stats = Statistics(
        {k: SiteStats.empty(analysis.coupling.tensors[k[0]].shape[k[1]], dtype) for k in layouts}
    )
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
                a = _frames(acts_a[k[0]], layout, batch.valid)
                b = _frames(acts_b[k[0]], layout, batch.valid)
                for name, x in (("A", a), ("B", b)):
                    if not torch.isfinite(x).all():
                        raise CalibrationError(
                            f"model {name} produced NaN or inf activations at {where[k]} "
                            f"({k[0]}); check the model's weights and the input audio"
                        )
                stats.sites[k].update(a, b)
            stats.seconds += batch.seconds
            stats.batches += 1
            bar.update(batch.seconds)
    stats.elapsed = time.perf_counter() - start
    return stats


def _frames(t: torch.Tensor, layout: _Layout, valid: torch.Tensor) -> torch.Tensor:
    """(frames, channels) of the real (unpadded) frames of site value ``t``."""
    x = t.movedim(layout.channel, -1)
    channels = x.shape[-1]
    b = layout.batch if layout.batch is None or layout.batch < layout.channel else layout.batch - 1
    tm = layout.time if layout.time is None or layout.time < layout.channel else layout.time - 1
    if b is None:  # a batch of one (its batch dim has size 1 and no class of its own)
        if tm is None or valid.numel() != 1:
            return x.reshape(-1, channels)
        steps = x.shape[tm]
        keep = torch.arange(steps) < int(torch.floor(valid[0] * steps + 1e-6))
        return x.index_select(tm, keep.nonzero().squeeze(1)).reshape(-1, channels)
    keep = torch.ones(x.shape[:-1], dtype=torch.bool)
    rows = x.shape[b]
    frac = valid[:rows] if valid.numel() >= rows else torch.ones(rows)
    if tm is None:
        row_ok = frac > 0
        shape = [1] * keep.ndim
        shape[b] = rows
        keep &= row_ok.reshape(shape)
    else:
        steps = x.shape[tm]
        n_valid = torch.floor(frac * steps + 1e-6).long()
        grid = torch.arange(steps)
        ok = grid[None, :] < n_valid[:, None]  # (rows, steps)
        shape = [1] * keep.ndim
        shape[b], shape[tm] = rows, steps
        if b > tm:
            ok = ok.T
        keep &= ok.reshape(shape)
    return x[keep]
