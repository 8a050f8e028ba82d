"""The calibration stage: read the user's data through the input adapter, collect statistics.

Example:
    >>> stats, info = calibrate(analysis, plan, [a, b], adapter, ["audio/"])   # doctest: +SKIP
    >>> info["description"]                                                    # doctest: +SKIP
    '64 clips (256.0 s) from 40 files in 2 sources'
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.export import ExportedProgram

from graphperm.analysis import Analysis
from graphperm.data import check_sources
from graphperm.errors import CalibrationError, TraceError
from graphperm.inputs import InputAdapter, ModelBatch, is_tensor_source, tensor_calibration
from graphperm.policy import Plan
from graphperm.runtime import release_memory, resolve_device, reuse_heap
from graphperm.stats.accumulate import reference_pairs
from graphperm.stats.collect import Statistics, collect
from graphperm.stats.runner import InterleavedRunner, match_values
from graphperm.trace import LoadedModel, trace

__all__ = ["calibrate"]

log = logging.getLogger(__name__)


def calibrate(
    analysis: Analysis,
    plan: Plan,
    models: Sequence[LoadedModel],
    adapter: InputAdapter,
    sources: Sequence[str | Path],
    *,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    every_pair: bool = False,
    within: bool = False,
    stop: Callable[[Statistics], bool] | None = None,
) -> tuple[Statistics, dict]:
    """Statistics of every model (``models[0]`` is the reference A) at the plan's sites over the
    calibration data in ``sources``, and a summary of what was read.

    ``device`` is ``cpu``, ``cuda``, or ``auto`` (a GPU when there is one). ``every_pair`` keeps
    the cross statistics of every pair of models (consensus alignment), not only each against
    A; ``within`` each model's with itself too (ZipIt!). ``stop(stats)`` is asked every
    ``calibration.check_every`` items whether there is enough data.
    """
    device = resolve_device(device)
    if not sources:
        raise CalibrationError(
            "this policy aligns groups, which needs calibration data; pass --calib PATH "
            "(files or folders)"
        )
    check_sources(sources)
    cal = plan.policy.calibration
    if is_tensor_source(sources):  # ready-made batches, for any model
        data = tensor_calibration(adapter, sources, shard=shard)
    else:
        data = adapter.calibration(sources, shard=shard)
    log.info("calibration: %s", data.summary.get("description", f"{len(data)} items"))
    batches = data.batches(cal.batch_size)
    programs = None
    if data.dynamic is not None:
        programs = own_length_graphs(analysis, plan, models[0], data.dynamic)
        if not programs:  # pad every batch to the exported shape instead
            batches = (adapter.padded(b, cal.batch_size) for b in batches)
            data.summary["padded"] = True
        elif 1 not in programs:  # a batch of one gets a second, masked-out row
            batches = (_two_rows(b) if b.mask.shape[0] == 1 else b for b in batches)
    with reuse_heap():
        stats = collect(
            analysis,
            plan.sites(),
            [m.state_dict() for m in models],
            batches,
            total=len(data),
            progress=progress,
            precision=cal.precision,
            max_frames_per_row=adapter.max_steps(cal.max_frame_rate),
            wide_strides=cal.wide_site_stride,
            split_half=cal.split_half or stop is not None,
            pairs=reference_pairs(len(models), every=every_pair or within, within=within),
            stop=stop,
            check_every=max(1, -(-cal.check_every // cal.batch_size)) if stop is not None else 0,
            device=device,
            float64_sites={
                (s.key, s.dim) for t in plan.targets if t.transform == "orth" for s in t.sites
            },
            programs=programs,
        )
    info = {adapter.item: stats.items, f"{adapter.item}_planned": len(data)}
    too_little = too_little_data(stats, plan)
    if too_little:
        log.warning("%s", too_little)
        info["warnings"] = [too_little]
    if adapter.unit == "s":
        info["seconds"] = round(stats.positions / adapter.per_unit, 3)
    else:
        info[adapter.unit] = int(stats.positions)
    info.update(data.summary)
    info["device"] = device
    release_memory()
    return stats, info


def too_little_data(stats: Statistics, plan: Plan) -> str | None:
    """A warning when some aligned group was measured at fewer positions than it has units:
    its correlation matrix then has a rank below its size, and the units it cannot separate
    are matched by noise (None when every group has enough)."""
    worst = None
    for target in plan.targets:
        for site in target.sites:
            key = (site.key, site.dim)
            if key not in stats.parts[0]:
                continue
            n, units = int(stats.site(key).n), int(stats.site(key).shift.shape[-1])
            if n < units and (worst is None or units > worst[1]):
                worst = (n, units, site.module or site.key)
    if worst is None:
        return None
    n, units, where = worst
    return (
        f"the calibration data gave {n} positions at {where} for {units} units: fewer "
        "positions than units, so the statistics cannot tell the units apart and the "
        "permutations are mostly noise; pass more calibration data"
    )


def own_length_graphs(
    analysis: Analysis, plan: Plan, model: LoadedModel, dynamic: dict
) -> dict[int | None, tuple[ExportedProgram, dict[str, str]]]:
    """``model`` exported again with the ``dynamic`` axes, for batches of more than one row
    (key None) when the analysed graph's example has several rows (a batch of one clip then
    gets a second, masked-out row), else with a batch of one (key 1), with its node name for
    every site value of the analysed graph and checked on the analysed graph's example inputs
    (every site's values must agree). Empty, with a warning, when that cannot be had: the
    caller then pads every batch to the exported shape."""
    keys = sorted({s.key for s in plan.sites()})
    inputs = analysis.traced.inputs
    rows = next(iter(inputs.values())).shape[0]
    want = _fingerprints(analysis.traced.program, keys, model, inputs)
    if rows > 1:
        got = _dynamic(analysis, model, inputs, dynamic, keys, want)
        what = "a dynamic batch and length"
        # A batch of one then runs with a second, masked-out row: one more clip's forward,
        # against another export and two checking forwards (about 5 s on HuBERT base).
        key = None
    else:
        one = {k: {d: v for d, v in axes.items() if d != 0} for k, axes in dynamic.items()}
        got = _dynamic(analysis, model, inputs, one, keys, want)
        what, key = "a dynamic length", 1
    if got is None:
        log.warning(
            "%s cannot be exported with %s (or then computes other values); clips are padded "
            "to clip_seconds instead (the padding then reaches real frames)",
            type(model.module).__name__,
            what,
        )
        return {}
    return {key: got}


def _dynamic(
    analysis: Analysis,
    model: LoadedModel,
    inputs: dict[str, torch.Tensor],
    dynamic: dict,
    keys: list[str],
    want: list[torch.Tensor],
) -> tuple[ExportedProgram, dict[str, str]] | None:
    """``model`` exported on ``inputs`` with ``dynamic`` axes and its names for ``keys``, if
    its values there have the fingerprints ``want``."""
    try:
        program = trace(model, inputs, dynamic_shapes=dynamic).program
    except TraceError as err:
        log.info("%s", err)
        return None
    names = match_values(analysis.traced.program.graph, program.graph)
    if not all(k in names for k in keys):
        return None
    got = _fingerprints(program, [names[k] for k in keys], model, inputs)
    if all(torch.allclose(w, g, rtol=1e-4, atol=1e-6) for w, g in zip(want, got)):
        return program, names
    return None


def _fingerprints(
    program: ExportedProgram, keys: list[str], model: LoadedModel, inputs: dict
) -> list[torch.Tensor]:
    """Per batch row: (elements, sum, sum of squares) of each value ``keys`` on ``inputs``,
    one site alive at a time."""
    rows = next(iter(inputs.values())).shape[0]
    out: list[torch.Tensor] = [torch.zeros(0)] * len(keys)

    def visit(i: int, values: list[torch.Tensor]) -> None:
        v = values[0].double()
        out[i] = torch.tensor([v.numel(), float(v.sum()), float(v.square().sum())]) / rows

    InterleavedRunner(program, keys, 1)([model.state_dict()], inputs, visit)
    return out


def _two_rows(batch: ModelBatch) -> ModelBatch:
    """A batch of one with a second row of zeros, masked out."""
    inputs = {k: torch.cat([v, torch.zeros_like(v)]) for k, v in batch.inputs.items()}
    mask = torch.cat([batch.mask, torch.zeros_like(batch.mask)])
    return ModelBatch(inputs, mask, batch.items)
