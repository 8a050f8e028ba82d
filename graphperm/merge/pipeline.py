"""The whole job: trace, resolve the policy, calibrate, solve, permute, check, interpolate, save.

Example:
    >>> from graphperm.merge import align, merge_models, save_merge
    >>> alignment = align(model_a, model_b, "paper", ["audio/"])        # doctest: +SKIP
    >>> result = merge_models(alignment, model_a, model_b)              # doctest: +SKIP
    >>> save_merge(result, "merged/")                                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
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
from graphperm.errors import CalibrationError, VerificationError
from graphperm.merge.checks import check_same_architecture
from graphperm.merge.interpolate import interpolate
from graphperm.merge.output import output_folder
from graphperm.policy import Plan, Policy, load_policy, resolve
from graphperm.solve import GroupReport, solve
from graphperm.stats import AudioAdapter, Statistics, collect
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
    stats, calibration = calibrate(
        analysis, plan, a, b, adapter, calib, progress=progress, shard=shard
    )
    timings["statistics_s"] = stats.elapsed
    t = time.perf_counter()
    perm, reports = solve(plan, analysis, stats)
    timings["solve_s"] = time.perf_counter() - t
    return Alignment(
        analysis, plan, perm, reports, stats, calibration, timings, (a.source, b.source)
    )


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
) -> tuple[Statistics, dict]:
    """Statistics of A and B at the plan's sites over the calibration audio."""
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
    )
    info = {
        "clips": len(data),
        "seconds": round(stats.seconds, 3),
        "files": len(data.files),
        "skipped_files": [f"{p}: {why}" for p, why in data.skipped],
        "description": data.describe(),
        "sample_rate": adapter.sample_rate,
    }
    return stats, info


def merge_models(
    alignment: Alignment, a: LoadedModel, b: LoadedModel, *, weight_a: float | None = None
) -> MergeResult:
    """Permute B, check it still computes what it computed, and interpolate with A."""
    timings: dict[str, float] = {}
    policy = alignment.policy
    if weight_a is not None:
        policy = policy.model_copy(update={"weight_a": weight_a})
        alignment.plan.policy = policy
    t = time.perf_counter()
    indexer = Indexer(alignment.analysis)
    state_b = permute_state(indexer, b.state_dict(), alignment.perm)
    timings["permute_s"] = time.perf_counter() - t
    check = None
    if policy.verify and alignment.perm.perms:
        t = time.perf_counter()
        check = check_permuted(alignment, b, state_b)
        timings["verify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged = interpolate(a.state_dict(), state_b, policy.weight_for)
    timings["interpolate_s"] = time.perf_counter() - t
    return MergeResult(alignment, merged, a, check, timings)


def check_permuted(
    alignment: Alignment, b: LoadedModel, state_b: dict[str, torch.Tensor]
) -> VerifyReport:
    """B with ``state_b`` must compute what B computes (outputs permuted); raise if not."""
    inputs = {k: v[:1] for k, v in alignment.analysis.traced.inputs.items()}
    permuted = copy.deepcopy(b.module)
    permuted.load_state_dict(state_b)
    with torch.no_grad():
        ref = _flat_outputs(b.module(**inputs))
        got = _flat_outputs(permuted(**inputs))
    del permuted
    report = compare_outputs(
        alignment.analysis, Indexer(alignment.analysis), alignment.perm, ref, got
    )
    if not report.ok:
        raise VerificationError(
            f"the permuted model B no longer computes what B computed (max relative error "
            f"{report.max_rel:.3g}); no output was written. This is a graphperm bug: please "
            "report it with the output of `graphperm trace MODEL --json`"
        )
    return report


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
