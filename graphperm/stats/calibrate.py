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

from graphperm.analysis import Analysis
from graphperm.errors import CalibrationError
from graphperm.inputs import InputAdapter, is_tensor_source, tensor_calibration
from graphperm.policy import Plan
from graphperm.runtime import release_memory, resolve_device
from graphperm.stats.accumulate import reference_pairs
from graphperm.stats.collect import Statistics, collect
from graphperm.trace import LoadedModel

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
    stop: Callable[[Statistics], bool] | None = None,
) -> tuple[Statistics, dict]:
    """Statistics of every model (``models[0]`` is the reference A) at the plan's sites over the
    calibration data in ``sources``, and a summary of what was read.

    ``device`` is ``cpu``, ``cuda``, or ``auto`` (a GPU when there is one). ``every_pair`` keeps
    the cross statistics of every pair of models (consensus alignment), not only each against
    A. ``stop(stats)`` is asked every ``calibration.check_every`` items whether there is enough
    data.
    """
    device = resolve_device(device)
    if not sources:
        raise CalibrationError(
            "this policy aligns groups, which needs calibration data; pass --calib PATH "
            "(files or folders)"
        )
    cal = plan.policy.calibration
    if is_tensor_source(sources):  # ready-made batches, for any model
        data = tensor_calibration(adapter, sources, shard=shard)
    else:
        data = adapter.calibration(sources, shard=shard)
    log.info("calibration: %s", data.summary.get("description", f"{len(data)} items"))
    stats = collect(
        analysis,
        plan.sites(),
        [m.state_dict() for m in models],
        data.batches(cal.batch_size),
        total=len(data),
        progress=progress,
        precision=cal.precision,
        max_frames_per_row=adapter.max_steps(cal.max_frame_rate),
        split_half=cal.split_half or stop is not None,
        pairs=reference_pairs(len(models), every=every_pair),
        stop=stop,
        check_every=max(1, -(-cal.check_every // cal.batch_size)) if stop is not None else 0,
        device=device,
        float64_sites={
            (s.key, s.dim) for t in plan.targets if t.transform == "orth" for s in t.sites
        },
    )
    info = {adapter.item: stats.items, f"{adapter.item}_planned": len(data)}
    if adapter.unit == "s":
        info["seconds"] = round(stats.positions / adapter.per_unit, 3)
    else:
        info[adapter.unit] = int(stats.positions)
    info.update(data.summary)
    info["device"] = device
    release_memory()
    return stats, info
