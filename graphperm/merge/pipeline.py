"""The whole job: trace, resolve the policy, calibrate, solve, permute, check, interpolate, save.

Example:
    >>> from graphperm.merge import align, merge_models, save_merge
    >>> alignment = align(model_a, model_b, "paper", ["audio/"])        # doctest: +SKIP
    >>> result = merge_models(alignment, model_a, model_b)              # doctest: +SKIP
    >>> save_merge(result, "merged/")                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from graphperm import __version__
from graphperm.analysis import Analysis, analyse
from graphperm.apply import Indexer, Permutation, compare_outputs, permute_state
from graphperm.apply.verify import VerifyReport, _flat_outputs
from graphperm.data import CalibrationSet
from graphperm.distributed import world
from graphperm.errors import CalibrationError, PolicyError, VerificationError
from graphperm.merge.checks import check_same_architecture
from graphperm.merge.interpolate import interpolate
from graphperm.merge.output import output_folder
from graphperm.policy import Plan, Policy, load_policy, resolve
from graphperm.solve import GroupReport, agreement, solve
from graphperm.stats import AudioAdapter, Statistics, collect
from graphperm.stats.io import all_reduce
from graphperm.trace import LoadedModel, trace

__all__ = [
    "Alignment",
    "MergeResult",
    "align",
    "check_permuted",
    "merge_models",
    "save_alignment",
    "save_merge",
    "write_model",
]

log = logging.getLogger(__name__)


@dataclass
class Alignment:
    """Permutations of B towards A, and how they were found."""

    analysis: Analysis
    plan: Plan
    perm: Permutation
    reports: list[GroupReport]
    stats: Statistics | None = None
    calibration: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    sources: tuple[str, str] = ("", "")

    @property
    def policy(self) -> Policy:
        return self.plan.policy


@dataclass
class MergeResult:
    """The merged weights (keys relative to the traced module) and the checks they passed."""

    alignment: Alignment
    state: dict[str, torch.Tensor]
    model_a: LoadedModel
    check: VerifyReport | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def module(self) -> torch.nn.Module:
        """A copy of A's traced module holding the merged weights, in eval mode (for probing
        a merge in memory; :func:`save_merge` writes it to disk)."""
        model = copy.deepcopy(self.model_a.module)
        model.load_state_dict(self.state)
        return model.eval()


def prepare(
    a: LoadedModel, policy: Policy, *, where: str = "policy"
) -> tuple[AudioAdapter | None, Analysis, Plan]:
    """Trace A on inputs of the calibration batch shape, analyse it, resolve the policy."""
    cal = policy.calibration
    try:
        adapter = AudioAdapter.for_model(
            a, clip_seconds=cal.clip_seconds, sample_rate=cal.sample_rate
        )
        inputs = adapter.example(cal.batch_size)
    except CalibrationError:
        if policy.align:
            raise
        adapter, inputs = None, None  # plain interpolation needs no calibration
    analysis = analyse(trace(a, inputs))
    return adapter, analysis, resolve(policy, analysis, where=where)


def align(
    a: LoadedModel,
    b: LoadedModel,
    policy: Policy | str | Path,
    calib: Sequence[str | Path] = (),
    *,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    where: str | None = None,
    device: str = "auto",
) -> Alignment:
    """Find the permutations of ``b`` that line its units up with ``a``'s.

    ``where`` names the policy in error messages (default: its file name).
    """
    where = where or (str(policy) if isinstance(policy, (str, Path)) else "policy")
    policy = load_policy(policy)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    check_same_architecture(a, b)
    adapter, analysis, plan = prepare(a, policy, where=where)
    timings["trace_analysis_s"] = time.perf_counter() - start
    if not plan.targets:
        return Alignment(analysis, plan, Permutation(), [], None, {}, timings, (a.source, b.source))
    rank, size = world()
    if size > 1 and shard is None:
        if policy.calibration.stop_agreement is not None:
            raise PolicyError(
                "calibration.stop_agreement is not supported under torchrun; "
                "remove it or run one process"
            )
        shard = (rank, size)
    stats, calibration = calibrate(
        analysis,
        plan,
        a,
        b,
        adapter,
        calib,
        progress=progress and rank == 0,
        shard=shard,
        device=device,
    )
    if size > 1:
        t = time.perf_counter()
        stats = all_reduce(stats)
        calibration = _gather_calibration(calibration, stats, size)
        timings["all_reduce_s"] = time.perf_counter() - t
        if rank != 0:  # rank 0 solves and writes
            return Alignment(
                analysis, plan, Permutation(), [], stats, calibration, timings, (a.source, b.source)
            )
    timings["statistics_s"] = stats.elapsed
    return finish_alignment(analysis, plan, stats, calibration, timings, (a.source, b.source))


def _gather_calibration(mine: dict, stats: Statistics, size: int) -> dict:
    """Every process's calibration summary, added up."""
    import torch.distributed as dist

    every: list[dict] = [{} for _ in range(size)]
    dist.all_gather_object(every, mine)
    return {
        "clips": stats.clips,
        "clips_planned": sum(c["clips_planned"] for c in every),
        "seconds": round(stats.seconds, 3),
        "files": sum(c["files"] for c in every),
        "skipped_files": [f for c in every for f in c["skipped_files"]],
        "description": f"{stats.clips} clips ({stats.seconds:.1f} s) read by {size} processes",
        "sample_rate": mine["sample_rate"],
        "processes": size,
    }


def finish_alignment(
    analysis: Analysis,
    plan: Plan,
    stats: Statistics,
    calibration: dict,
    timings: dict[str, float],
    sources: tuple[str, str],
) -> Alignment:
    """Solve from complete statistics (and measure split-half agreement)."""
    t = time.perf_counter()
    perm, reports = solve(plan, analysis, stats)
    timings["solve_s"] = time.perf_counter() - t
    release_memory()
    if len(stats.parts) == 2:
        t = time.perf_counter()
        halves = split_half_agreement(plan, analysis, stats)
        for r in reports:
            r.split_half_agreement = halves.get(r.name)
        timings["split_half_s"] = time.perf_counter() - t
    return Alignment(analysis, plan, perm, reports, stats, calibration, timings, sources)


def calibrate(
    analysis: Analysis,
    plan: Plan,
    a: LoadedModel,
    b: LoadedModel,
    adapter: AudioAdapter,
    calib: Sequence[str | Path],
    *,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
) -> tuple[Statistics, dict]:
    """Statistics of A and B at the plan's sites over the calibration audio (on ``device``:
    ``cpu``, ``cuda``, or ``auto`` = a GPU when there is one)."""
    device = resolve_device(device)
    if not calib:
        raise CalibrationError(
            "this policy aligns groups, which needs calibration audio; pass --calib PATH "
            "(audio files or folders)"
        )
    cal = plan.policy.calibration
    data = CalibrationSet(
        calib,
        sample_rate=adapter.sample_rate,
        clip_seconds=cal.clip_seconds,
        num_clips=cal.num_clips,
        seed=cal.seed,
        shard=shard,
    )
    log.info("calibration: %s", data.describe())
    batches = (adapter(batch, cal.batch_size) for batch in data.batches(cal.batch_size))
    stop, check_every = None, 0
    if cal.stop_agreement is not None:
        stop = _enough_data(plan, analysis, cal.stop_agreement)
        check_every = max(1, -(-cal.check_every // cal.batch_size))
    stats = collect(
        analysis,
        plan.sites(),
        a.state_dict(),
        b.state_dict(),
        batches,
        total_seconds=data.seconds,
        progress=progress,
        precision=cal.precision,
        max_frames_per_row=adapter.max_frames(cal.max_frame_rate),
        split_half=cal.split_half or cal.stop_agreement is not None,
        stop=stop,
        check_every=check_every,
        device=device,
    )
    info = {
        "clips": stats.clips,
        "clips_planned": len(data),
        "seconds": round(stats.seconds, 3),
        "files": len(data.files),
        "skipped_files": [f"{p}: {why}" for p, why in data.skipped],
        "description": data.describe(),
        "sample_rate": adapter.sample_rate,
        "device": device,
    }
    release_memory()
    return stats, info


def release_memory() -> None:
    """Hand freed heap memory back to the OS. glibc keeps it otherwise (about 400 MB after
    calibrating HuBERT base), and the solve that follows would start that much higher."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when a GPU is usable, else ``cpu``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CalibrationError(
            f"--device {device}: no CUDA GPU is available here; use --device cpu"
        )
    return device


def split_half_agreement(plan: Plan, analysis: Analysis, stats: Statistics) -> dict[str, float]:
    """Per group, how far the permutations solved from each half of the data agree."""
    first, _ = solve(plan, analysis, stats.half(0), reports=False)
    second, _ = solve(plan, analysis, stats.half(1), reports=False)
    return agreement(plan, analysis, first, second)


def _enough_data(plan: Plan, analysis: Analysis, threshold: float):
    """A ``stop`` callback: true once every group's split-half agreement has been at least
    ``threshold`` at two checks in a row."""
    streak = [0]

    def stop(stats: Statistics) -> bool:
        worst = min(split_half_agreement(plan, analysis, stats).values(), default=1.0)
        log.info("after %.0f s of audio: lowest split-half agreement %.4f", stats.seconds, worst)
        streak[0] = streak[0] + 1 if worst >= threshold else 0
        return streak[0] >= 2

    return stop


def merge_models(
    alignment: Alignment,
    a: LoadedModel,
    b: LoadedModel,
    *,
    weight_a: float | None = None,
    inplace: bool = False,
) -> MergeResult:
    """Permute B, check it still computes what it computed, and interpolate with A.

    ``inplace`` permutes B's weights and overwrites A's with the merge instead of making copies
    (what the command line does, to keep memory at two models).
    """
    timings: dict[str, float] = {}
    policy = alignment.policy
    if weight_a is not None:
        policy = policy.model_copy(update={"weight_a": weight_a})
        alignment.plan.policy = policy
    indexer = Indexer(alignment.analysis)
    inputs = {k: v[:1] for k, v in alignment.analysis.traced.inputs.items()}
    checking = policy.verify and bool(alignment.perm.perms)
    t = time.perf_counter()
    reference = _outputs(b.module, inputs) if checking else None
    if inplace:
        permute_module_(indexer, b.module, alignment.perm)
        state_b = b.state_dict()
        permuted = b.module
    else:
        state_b = permute_state(indexer, b.state_dict(), alignment.perm)
        permuted = copy.deepcopy(b.module) if checking else None
        if permuted is not None:
            permuted.load_state_dict(state_b)
    timings["permute_s"] = time.perf_counter() - t
    check = None
    if checking:
        t = time.perf_counter()
        check = _check(alignment, indexer, reference, _outputs(permuted, inputs))
        timings["verify_s"] = time.perf_counter() - t
    del permuted
    t = time.perf_counter()
    if inplace:
        with torch.no_grad():
            for key, tensor in a.state_dict().items():
                if tensor.is_floating_point():
                    w = float(policy.weight_for(key))
                    tensor.mul_(w).add_(state_b[key].to(tensor.dtype), alpha=1.0 - w)
        merged = a.state_dict()
    else:
        merged = interpolate(a.state_dict(), state_b, policy.weight_for)
    timings["interpolate_s"] = time.perf_counter() - t
    return MergeResult(alignment, merged, a, check, timings)


def permute_module_(indexer: Indexer, module: torch.nn.Module, perm: Permutation) -> None:
    """Permute a module's weights in place, one tensor at a time (no second copy of the model)."""
    coupling = indexer.analysis.coupling
    by_target = {target: key for key, target in coupling.state.items()}
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            key = by_target.get(name)
            if key is not None:
                tensor.copy_(indexer.permute(tensor, coupling.classes(key), perm))


def _outputs(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return _flat_outputs(module(**inputs))


def _check(
    alignment: Alignment, indexer: Indexer, ref: list[torch.Tensor], got: list[torch.Tensor]
) -> VerifyReport:
    report = compare_outputs(alignment.analysis, indexer, alignment.perm, ref, got)
    if not report.ok:
        raise VerificationError(
            f"the permuted model B no longer computes what B computed (max relative error "
            f"{report.max_rel:.3g}); no output was written. This is a graphperm bug: please "
            "report it with the output of `graphperm trace MODEL --json`"
        )
    return report


def check_permuted(
    alignment: Alignment, b: LoadedModel, state_b: dict[str, torch.Tensor]
) -> VerifyReport:
    """B with ``state_b`` must compute what B computes (outputs permuted); raise if not."""
    inputs = {k: v[:1] for k, v in alignment.analysis.traced.inputs.items()}
    permuted = copy.deepcopy(b.module)
    permuted.load_state_dict(state_b)
    return _check(
        alignment,
        Indexer(alignment.analysis),
        _outputs(b.module, inputs),
        _outputs(permuted, inputs),
    )


# ------------------------------------------------------------------------------ saving
def save_alignment(alignment: Alignment, folder: Path) -> None:
    """Write ``permutations.safetensors``, the resolved ``policy.yaml`` and ``merge_report.json``
    (without merge-specific fields) into ``folder``."""
    a = alignment.analysis.traced.loaded
    alignment.perm.save(
        folder / "permutations.safetensors",
        metadata={
            "graphperm": __version__,
            "model_class": type(a.module).__name__,
            "model_a": alignment.sources[0],
            "model_b": alignment.sources[1],
        },
    )
    resolved = alignment.plan.to_dict()
    (folder / "policy.yaml").write_text(
        "# The policy as graphperm resolved it for this merge (defaults filled in).\n"
        + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    )
    (folder / "merge_report.json").write_text(json.dumps(report_dict(alignment), indent=2))


def report_dict(alignment: Alignment, result: MergeResult | None = None) -> dict:
    policy = alignment.policy
    out = {
        "graphperm": __version__,
        "model_a": alignment.sources[0],
        "model_b": alignment.sources[1],
        "model_class": type(alignment.analysis.traced.loaded.module).__name__,
        "policy": policy.description or "custom",
        "weight_a": policy.weight_a,
        "calibration": alignment.calibration,
        "groups": [r.to_dict() for r in alignment.reports],
        "unmeasured": alignment.plan.unmeasured,
        "warnings": alignment.analysis.warnings,
        "timings_s": {k: round(v, 3) for k, v in alignment.timings.items()},
    }
    if result is not None:
        out["timings_s"].update({k: round(v, 3) for k, v in result.timings.items()})
        if result.check is not None:
            out["verification"] = {
                "ok": result.check.ok,
                "max_abs_error": result.check.max_abs,
                "max_rel_error": result.check.max_rel,
            }
    return out


def write_model(folder: Path, loaded: LoadedModel, state: dict[str, torch.Tensor]) -> None:
    """Save ``loaded``'s whole model with ``state`` (keys relative to the traced module) in place
    of the traced module's weights, as a ``save_pretrained`` folder (config + safetensors)."""
    full = dict(loaded.model.state_dict())
    full.update({loaded.prefix + k: v for k, v in state.items()})
    loaded.model.save_pretrained(folder, state_dict=full, safe_serialization=True)
    prep = Path(loaded.source) / "preprocessor_config.json"
    if prep.is_file():
        shutil.copy(prep, folder / prep.name)


def save_merge(result: MergeResult, out: str | Path, *, force: bool = False) -> Path:
    """Write the merged model folder (loadable with ``AutoModel.from_pretrained``), the
    permutations, the resolved policy and the report; all or nothing."""
    out = Path(out)
    a = result.model_a
    with output_folder(out, force=force) as tmp:
        write_model(tmp, a, result.state)
        save_alignment(result.alignment, tmp)
        (tmp / "merge_report.json").write_text(
            json.dumps(report_dict(result.alignment, result), indent=2)
        )
    return out
