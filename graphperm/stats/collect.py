"""One pass over the calibration data: every model on each batch, statistics at every site.

Permutations preserve function, so aligning one group never changes the activations at another
group's sites: all statistics come from a single pass, with no re-runs per layer and no stored
activations. Padded positions (the batch's mask) are dropped before they reach the statistics.

Example:
    >>> from graphperm.trace import load_model, trace                        # doctest: +SKIP
    >>> stats = collect(analysis, plan.sites(), [state_a, state_b], batches)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram
from tqdm.auto import tqdm

from graphperm.analysis import Analysis, Site
from graphperm.errors import CalibrationError
from graphperm.inputs import ModelBatch, step_mask
from graphperm.stats.accumulate import NonFinite, Pair, SiteStats, reference_pairs
from graphperm.stats.runner import InterleavedRunner

__all__ = ["FrameLayout", "SiteKey", "Statistics", "collect", "frame_layout", "valid_frames"]

log = logging.getLogger(__name__)


SiteKey = tuple[str, int]


@dataclass
class Statistics:
    """Statistics per site (``(value key, dim)``), and how much data they saw.

    With ``split_half`` the batches alternate between two independent halves (``parts``), so the
    permutations solved from each half can be compared (does more data change the answer?);
    everything else sees their sum. ``positions`` counts valid input positions (audio samples,
    tokens, images), ``items`` the examples (clips, texts, images).
    """

    parts: list[dict[SiteKey, SiteStats]] = field(default_factory=lambda: [{}])
    positions: float = 0.0
    batches: int = 0
    elapsed: float = 0.0
    items: int = 0

    def site_keys(self) -> list[SiteKey]:
        return list(self.parts[0])

    def site(self, key: SiteKey) -> SiteStats:
        """All data's statistics at ``key`` (halves are summed on the fly, not stored)."""
        out = self.parts[0][key]
        for part in self.parts[1:]:
            out = out.merge(part[key])
        return out

    def correlation(self, key: SiteKey, pair: Pair = (0, 1)) -> torch.Tensor:
        return self.site(key).correlation(pair)

    def covariance(self, key: SiteKey, pair: Pair = (0, 1)) -> torch.Tensor:
        return self.site(key).covariance(pair)

    def half(self, i: int) -> Statistics:
        """One of the two halves, as statistics of their own."""
        if len(self.parts) != 2:
            raise ValueError("these statistics were not collected in two halves")
        return Statistics(
            [self.parts[i]], self.positions / 2, self.batches // 2, self.elapsed, self.items // 2
        )

    def merge(self, other: Statistics) -> Statistics:
        """The statistics of both data sets (part by part)."""
        if len(self.parts) != len(other.parts):
            raise ValueError("cannot merge statistics collected with and without halves")
        parts = []
        for mine, theirs in zip(self.parts, other.parts):
            merged = {}
            for k in set(mine) | set(theirs):
                x, y = mine.get(k), theirs.get(k)
                merged[k] = x.merge(y) if x is not None and y is not None else (x or y)
            parts.append(merged)
        return Statistics(
            parts,
            self.positions + other.positions,
            self.batches + other.batches,
            self.elapsed + other.elapsed,
            self.items + other.items,
        )


@dataclass(frozen=True)
class FrameLayout:
    """Which dims of a site's value are the channels, the batch and the time (None: none)."""

    channel: int
    batch: int | None
    time: int | None


def frame_layout(analysis: Analysis, site: Site) -> FrameLayout:
    """Which dims of a site's value are the channels, the batch and the time (if unique)."""
    c = analysis.coupling
    shape = c.tensors[site.key].shape
    user = next(iter(c.inputs), None)
    batch_cls = c.cls(user, 0) if user is not None else None
    dims = c.classes(site.key)
    batch = next((d for d, k in enumerate(dims) if k == batch_cls and d != site.dim), None)
    rest = [d for d in range(len(shape)) if d not in (site.dim, batch) and shape[d] > 1]
    return FrameLayout(site.dim, batch, rest[0] if len(rest) == 1 else None)


def collect(
    analysis: Analysis,
    sites: list[Site],
    states: Sequence[dict[str, torch.Tensor]],
    batches: Iterable[ModelBatch],
    *,
    total: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
    max_frames_per_row: int | None = None,
    wide_strides: Mapping[int, int] | None = None,
    split_half: bool = False,
    pairs: Sequence[Pair] | None = None,
    stop: Callable[[Statistics], bool] | None = None,
    check_every: int = 0,
    device: torch.device | str = "cpu",
    float64_sites: Collection[SiteKey] = (),
    programs: dict[int | None, tuple[ExportedProgram, dict[str, str]]] | None = None,
) -> Statistics:
    """Run every model (``states[0]`` is the reference A) on every batch and accumulate
    statistics at ``sites``.

    ``pairs`` are the model pairs whose cross statistics are kept (default ``(0, k)``: each
    model against A). ``precision`` is ``fp32``, ``bf16`` (forwards under bf16 autocast and bf16
    cross products, fp32 sums: about twice as fast on CPUs with bf16 units, less exact) or
    ``fp64`` (the exact reference: forwards and sums in float64). ``max_frames_per_row``
    subsamples a site's time axis evenly to at most that many frames per batch row (the
    high-rate conv sites); ``None`` keeps every frame. ``wide_strides`` (``{channels: k}``)
    keeps every ``k``-th of those frames at sites at least ``channels`` wide, whose cross
    products cost ``channels²`` per frame (FFN sites: as much as both models' FFN forwards);
    the widest threshold a site reaches applies. ``split_half`` alternates batches
    between two halves. Every ``check_every`` batches, ``stop(stats)`` may end the pass early
    (enough data). ``total`` (items) sizes the progress
    bar. On ``device="cuda"`` the forwards and the sums run on the GPU; the statistics come back
    on the CPU. ``float64_sites`` accumulate in float64 whatever the precision (sites of rotated
    parts: a Procrustes solve amplifies rounding by the covariance's condition number).
    ``programs`` run the batches instead of the analysed graph: the same model exported with a
    dynamic batch and length (each with its node name for every value of the analysed graph),
    for batches of any shape whose rows are each all real or all padding; key 1 takes batches
    of one row, key None any other.
    """
    device = torch.device(device)
    wide = precision == "fp64"
    if wide:  # the forwards too: the graph runs in any float dtype
        states = [{k: _wide(v) for k, v in s.items()} for s in states]
    if device.type != "cpu":
        states = [{k: v.to(device) for k, v in s.items()} for s in states]
    pairs = tuple(pairs) if pairs is not None else reference_pairs(len(states))
    keys = sorted({s.key for s in sites}, key=list(analysis.coupling.tensors).index)
    layouts = {(s.key, s.dim): frame_layout(analysis, s) for s in sites}
    where = {(s.key, s.dim): s.module or s.key for s in sites}
    shapes = {k: analysis.coupling.tensors[k[0]].shape for k in layouts}
    accum = torch.float64 if precision == "fp64" else torch.float32
    halves = 2 if split_half else 1
    stats = Statistics(
        [
            {
                k: SiteStats.empty(
                    shapes[k][k[1]],
                    torch.float64 if k in float64_sites else accum,
                    device,
                    models=len(states),
                    pairs=pairs,
                )
                for k in layouts
            }
            for _ in range(halves)
        ]
    )
    product = torch.bfloat16 if precision == "bf16" else None
    strides = {
        k: _stride(shapes[k][lay.time], max_frames_per_row) * _thin(shapes[k][k[1]], wide_strides)
        if lay.time is not None
        else 1
        for k, lay in layouts.items()
    }
    in_graph: dict[str, tuple[int, int]] = {}
    for (key, _), lay in layouts.items():  # a value's sites share one time axis and stride
        if strides[(key, _)] > 1:
            in_graph.setdefault(key, (lay.time, strides[(key, _)]))
    dynamic = programs is not None
    runners = {
        rows: InterleavedRunner(
            program,
            [rename.get(k, k) for k in keys],
            len(states),
            {rename.get(k, k): v for k, v in in_graph.items()},
            device=device,
            float_dtype=torch.float64 if wide else None,
        )
        for rows, (program, rename) in (programs or {None: (analysis.traced.program, {})}).items()
    }
    by_value: dict[str, list[SiteKey]] = {}
    for k in layouts:
        by_value.setdefault(k[0], []).append(k)
    now: dict = {}  # this batch: its mask, step masks per time-axis length, the half it feeds

    def visit(i: int, values: list[torch.Tensor]) -> None:
        """Every model's value at site value ``keys[i]``: into the statistics (then freed)."""
        steps = now["steps"]
        for k in by_value[keys[i]]:
            layout = layouts[k]
            step = in_graph.get(k[0], (0, 1))[1]
            full = shapes[k][layout.time] if layout.time is not None else 0
            if full and dynamic:  # this batch's length (its rows are all real or all padding)
                full = values[0].shape[layout.time] * step
            if full not in steps:  # no time axis (0): a row counts if any of it is real
                mask = now["mask"]
                steps[full] = step_mask(mask, full) if full else mask.any(1, keepdim=True)
            frames = [valid_frames(v, layout, steps[full], step) for v in values]
            try:
                with torch.autocast(device.type, enabled=False):  # products at `product`
                    now["part"][k].update(*frames, product=None if k in float64_sites else product)
            except NonFinite as err:
                raise CalibrationError(
                    f"model {'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[int(str(err))]} produced NaN or inf "
                    f"activations at {where[k]} ({k[0]}); check the model's weights and the "
                    "input data"
                ) from None

    start = time.perf_counter()
    bar = tqdm(total=total, unit="item", desc="statistics", disable=not progress)
    with bar:
        for batch in batches:
            inputs = {k: (_wide(v) if wide else v).to(device) for k, v in batch.inputs.items()}
            now.update(
                mask=batch.mask.to(device), steps={}, part=stats.parts[stats.batches % halves]
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                rows = batch.mask.shape[0]
                runner = runners.get(rows) or runners.get(None) or runners[rows]
                runner(list(states), inputs, visit)
            stats.positions += batch.positions
            stats.batches += 1
            stats.items += batch.items
            bar.update(batch.items)
            checkpoint = stop is not None and check_every and stats.batches % check_every == 0
            if checkpoint and stop(stats):
                log.info("enough data after %d batches (%d items)", stats.batches, stats.items)
                break
    stats.elapsed = time.perf_counter() - start
    if device.type != "cpu":
        stats.parts = [{k: s.to("cpu") for k, s in part.items()} for part in stats.parts]
    return stats


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.is_floating_point() else t


def _stride(steps: int, max_frames: int | None) -> int:
    return 1 if not max_frames or steps <= max_frames else -(-steps // max_frames)


def _thin(channels: int, wide_strides: Mapping[int, int] | None) -> int:
    """The extra frame stride of a site ``channels`` wide (1: every frame).

    Example:
        >>> _thin(3072, {2048: 2}), _thin(768, {2048: 2}), _thin(3072, {512: 2, 2048: 4})
        (2, 1, 4)
    """
    reached = [w for w in (wide_strides or {}) if channels >= w]
    return wide_strides[max(reached)] if reached else 1


def valid_frames(
    t: torch.Tensor, layout: FrameLayout, valid: torch.Tensor, stride: int = 1
) -> torch.Tensor:
    """(frames, channels) of the real (unpadded) frames of site value ``t``.

    ``valid`` is ``(rows, full)`` bool over the site's own time axis at full resolution (see
    :func:`graphperm.inputs.step_mask`); ``t`` holds every ``stride``-th of those steps.

    Example:
        >>> t = torch.arange(12.0).reshape(1, 2, 6)             # (batch, channels, time)
        >>> ok = torch.tensor([[True, True, True, True, False, False]])
        >>> strided = t[:, :, ::2]                              # what the runner keeps
        >>> valid_frames(strided, FrameLayout(channel=1, batch=0, time=2), ok, stride=2).tolist()
        [[0.0, 6.0], [2.0, 8.0]]
    """
    x = t.movedim(layout.channel, -1)
    channels = x.shape[-1]
    b = layout.batch if layout.batch is None or layout.batch < layout.channel else layout.batch - 1
    tm = layout.time if layout.time is None or layout.time < layout.channel else layout.time - 1
    if b is None:  # a batch of one (its batch dim has size 1 and no class of its own)
        if tm is None or valid.shape[0] != 1:
            return x.reshape(-1, channels)
        keep = valid[0, ::stride][: x.shape[tm]]
        return x.index_select(tm, keep.nonzero().squeeze(1)).reshape(-1, channels)
    rows = x.shape[b]
    ok = valid[:rows] if valid.shape[0] >= rows else torch.ones_like(valid[:1]).expand(rows, -1)
    shape = [1] * (x.ndim - 1)
    shape[b] = rows
    if tm is not None:
        ok = ok[:, ::stride][:, : x.shape[tm]]
    if bool(ok.all()):  # nothing padded: the same frames in the same order, without a mask
        return x.reshape(-1, channels)
    if tm is None:
        keep = ok.any(1).reshape(shape).expand(x.shape[:-1])
    else:
        shape[tm] = ok.shape[1]
        keep = (ok.T if b > tm else ok).reshape(shape).expand(x.shape[:-1])
    return x[keep]
