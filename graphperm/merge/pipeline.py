"""The whole job, stage by stage: trace and resolve (:func:`prepare`), calibrate
(:func:`graphperm.stats.calibrate`), solve (:func:`finish_alignment`, through the policy's
alignment method), then permute, check and interpolate (:func:`merge_models`). Each stage lives in
its own package; this module only strings them together.

Example:
    >>> import torch
    >>> from graphperm.trace import load_model
    >>> a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    >>> result = merge_models(align(a, b, "linear"), a, b, weight_a=0.5)
    >>> result.weights
    [0.5, 0.5]
    >>> three = align_models([a, b, b], "linear")
    >>> merged = merge_all(three, [a, b, b], weights=[0.5, 0.25, 0.25])
    >>> key = "encoder.layer_norm.weight"
    >>> torch.allclose(merged.state[key], result.state[key])
    True
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from graphperm.analysis import Analysis, analyse
from graphperm.apply import (
    Indexer,
    check_inputs,
    check_permuted,
    flat_outputs,
    fold_state,
    folds_for,
    outputs,
    permute_state,
)
from graphperm.apply.zip import input_axes, merge_matrices, own_merge, zip_state
from graphperm.distributed import gather_calibration, world
from graphperm.errors import CalibrationError, PolicyError
from graphperm.inputs import (
    InputAdapter,
    calibration_adapter,
    is_tensor_source,
    tensor_calibration,
)
from graphperm.learn import LearnedAlignment  # noqa: F401  (registers method: learned)
from graphperm.learn.repair import repair_state, repair_targets
from graphperm.merge.checks import check_same_architecture
from graphperm.merge.combine import combine
from graphperm.merge.quality import weight_agreement
from graphperm.merge.results import Alignment, MergeResult
from graphperm.policy import Plan, Policy, load_policy, resolve
from graphperm.runtime import release_memory, resolve_device
from graphperm.solve import (
    Problem,
    RunContext,
    correlation_with_a,
    get_method,
    refine,
    split_half_agreement,
)
from graphperm.solve.zipit import zip_plan
from graphperm.stats import Statistics, calibrate
from graphperm.stats.io import all_reduce
from graphperm.trace import LoadedModel, same_tensor, trace

__all__ = [
    "align",
    "align_models",
    "aligned_states",
    "check_scope",
    "enough_data",
    "finish_alignment",
    "fold_models",
    "merge_all",
    "merge_models",
    "prepare",
]

log = logging.getLogger(__name__)


def prepare(
    a: LoadedModel, policy: Policy, *, where: str = "policy", calib: Sequence[str | Path] = ()
) -> tuple[InputAdapter | None, Analysis, Plan]:
    """Trace A on inputs of the calibration batch's shape, analyse it, resolve the policy.

    Returns the input adapter (None when the model has no calibration recipe and none is
    needed: the policy aligns nothing, or its method reads only weights), the analysis and the
    plan. A model with no input recipe of its own is traced on the first items of ``calib``
    when those are ``.safetensors`` batches.
    """
    method = get_method(policy.method, where=where)
    check_scope(a, policy, where)
    try:
        adapter = calibration_adapter(a, policy.calibration, calib)
        inputs = adapter.example(policy.calibration.batch_size)
    except CalibrationError:
        if policy.align and "correlation" in method.needs:
            raise
        adapter, inputs = None, None  # plain interpolation and weight matching need no data
    analysis = analyse(trace(a, inputs))
    return adapter, analysis, resolve(policy, analysis, where=where)


def check_scope(a: LoadedModel, policy: Policy, where: str = "policy") -> None:
    """The policy's ``scope`` fits model A: A is an encoder–decoder, loaded with that scope."""
    if policy.scope is None:
        return
    name = f"{type(a.model).__name__} from '{a.source}'"
    if not a.encoder_decoder:
        raise PolicyError(
            f"{where}: scope '{policy.scope}' is for encoder–decoder models (Whisper, T5, BART), "
            f"and {name} has no decoder; remove scope from the policy (or pass an "
            "encoder–decoder model)"
        )
    if a.scope != policy.scope:
        raise PolicyError(
            f"{where}: scope '{policy.scope}', but {name} was loaded with scope '{a.scope}'; "
            f"load it with load_model(..., scope='{policy.scope}') (--scope {policy.scope})"
        )


def align(
    a: LoadedModel,
    b: LoadedModel,
    policy: Policy | str | Path | dict,
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
    return align_models(
        [a, b], policy, calib, progress=progress, shard=shard, where=where, device=device
    )


def align_models(
    models: Sequence[LoadedModel],
    policy: Policy | str | Path | dict,
    calib: Sequence[str | Path] = (),
    *,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    where: str | None = None,
    device: str = "auto",
    loss_fn=None,
) -> Alignment:
    """Find the permutations that bring every model after the first into the first's basis,
    from one pass over the calibration data (each model's statistics against A).

    When the plan rotates parts, every model first has the norms those rotations pass through
    folded into their readers, in place (:mod:`graphperm.apply.fold`: the same function, gains
    1 and biases 0), so that what is measured differs between models by a rotation only."""
    if len(models) < 2:
        raise PolicyError("aligning needs at least two models")
    where = where or (str(policy) if isinstance(policy, (str, Path)) else "policy")
    policy = load_policy(policy)
    method = get_method(policy.method, where=where)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    check_same_architecture(*models)
    adapter, analysis, plan = prepare(models[0], policy, where=where, calib=calib)
    timings["trace_analysis_s"] = time.perf_counter() - start
    sources = tuple(m.source for m in models)
    _check_consensus(plan, len(models), where)
    references = None
    if policy.verify and plan.rotated:  # the check compares with the models as given
        inputs = check_inputs(analysis)
        references = [outputs(m.module, inputs) for m in models[1:]]
    fold_models(models, analysis, plan)
    if not plan.targets:
        return Alignment.unaligned(analysis, plan, sources, timings=timings, method=method.name)
    stats, calibration = None, {}
    if "correlation" in method.needs:
        assert adapter is not None  # prepare raises when a policy that aligns has no adapter
        rank, size = world()
        cal = policy.calibration
        if size > 1 and shard is None:
            if cal.stop_agreement is not None:
                raise PolicyError(
                    "calibration.stop_agreement is not supported under torchrun; "
                    "remove it or run one process"
                )
            shard = (rank, size)
        stop = enough_data(analysis, plan, cal.stop_agreement) if cal.stop_agreement else None
        stats, calibration = calibrate(
            analysis,
            plan,
            models,
            adapter,
            calib,
            progress=progress and rank == 0,
            shard=shard,
            device=device,
            stop=stop,
            every_pair=policy.consensus_rounds > 0 and len(models) > 2,
            within=bool(plan.zipped),
        )
        if size > 1:
            t = time.perf_counter()
            stats = all_reduce(stats)
            calibration = gather_calibration(calibration, size)
            timings["all_reduce_s"] = time.perf_counter() - t
            if rank != 0:  # rank 0 solves and writes
                return Alignment.unaligned(
                    analysis, plan, sources, stats=stats, calibration=calibration, timings=timings
                )
        timings["statistics_s"] = stats.elapsed
    states = [m.state_dict() for m in models]  # weight matching and tie-breaking read them
    context, batches = None, []
    wanted = max(
        policy.learn.items if "models" in method.needs else 0,
        policy.repair.items if policy.repair.enabled else 0,
        policy.zipit.items if plan.zipped else 0,
    )
    if wanted:  # learned alignment, REPAIR and ZipIt!'s report run the models on batches
        if adapter is None or not calib:
            raise CalibrationError(
                "repair and method: learned run the models on calibration data; pass --calib PATH"
            )
        batches = learning_batches(adapter, calib, wanted, policy.calibration.batch_size)
    if "models" in method.needs:
        context = RunContext(list(models), batches, loss_fn, progress, resolve_device(device))
    alignment = finish_alignment(
        analysis, plan, stats, calibration, timings, sources, states=states, context=context
    )
    alignment.batches = batches
    alignment.references = references
    return alignment


def learning_batches(
    adapter: InputAdapter, calib: Sequence[str | Path], items: int, batch_size: int
) -> list[dict]:
    """The model inputs of the first ``items`` calibration items, in batches of
    ``batch_size``, kept in memory (what learned alignment optimises on)."""
    data = (
        tensor_calibration(adapter, calib)
        if is_tensor_source(calib)
        else adapter.calibration(calib)
    )
    out, seen = [], 0
    for batch in data.batches(batch_size):
        out.append(dict(batch.inputs))
        seen += batch.items
        if seen >= items:
            break
    return out


def fold_models(models: Sequence[LoadedModel], analysis: Analysis, plan: Plan) -> None:
    """Fold, in place, the norms the plan's rotations pass through into the linear layers
    that read them, in every model (what every route does before measuring: ``align``,
    ``stats`` and ``solve``), so that what is measured differs between models by a rotation
    only. Nothing happens when the plan rotates nothing."""
    folds = folds_for(analysis, plan.rotated)
    if folds:
        for m in models:
            fold_state(m.state_dict(), folds, inplace=True)
        log.info("folded %d norms into the linear layers that read them", len(folds))


def _check_consensus(plan: Plan, models: int, where: str = "policy") -> None:
    if plan.policy.consensus_rounds > 0 and models > 2 and plan.rotated:
        raise PolicyError(
            f"{where}: consensus refinement permutes only, and this policy rotates "
            f"{len(plan.rotated)} part(s); set consensus_rounds to 0 (--consensus-rounds 0) "
            "or align with `transform: perm`"
        )


def finish_alignment(
    analysis: Analysis,
    plan: Plan,
    stats: Statistics | None,
    calibration: dict,
    timings: dict[str, float],
    sources: tuple[str, ...],
    *,
    states: list | None = None,
    context: RunContext | None = None,
) -> Alignment:
    """Solve every model's permutations from complete statistics (or weights) with the plan's
    alignment method, and measure split-half agreement when the statistics have two halves.
    ``context`` gives methods that run the models (``learned``) the models and batches."""
    method = get_method(plan.policy.method)
    _check_consensus(plan, len(sources))
    perms, reports, extras = [], [], []
    t = time.perf_counter()
    problems = [
        Problem(analysis, plan, k, stats, list(states or []), context)
        for k in range(1, len(sources))
    ]
    for problem in problems:
        solution = method.align(problem)
        perms.append(solution.perm)
        reports.append(solution.reports)
        extras.append(solution.extra)
    timings["solve_s"] = time.perf_counter() - t
    release_memory()
    if stats is not None and len(stats.parts) == 2:
        t = time.perf_counter()
        for problem, rows in zip(problems, reports):
            halves = split_half_agreement(method, dataclasses.replace(problem, context=None))
            for r in rows:
                r.split_half_agreement = halves.get(r.name)
        timings["split_half_s"] = time.perf_counter() - t
    consensus: list[dict] = []
    if plan.policy.consensus_rounds > 0 and len(sources) > 2:
        t = time.perf_counter()
        perms, consensus = _consensus(analysis, plan, perms, reports, stats, list(states or []))
        timings["consensus_s"] = time.perf_counter() - t
    unmerges, zip_reports = [], []
    if plan.zipped:
        t = time.perf_counter()
        unmerges, zip_reports = _zip(analysis, plan, stats, perms)
        timings["zip_s"] = time.perf_counter() - t
    agreement = (
        [  # a quality figure for every method: A's and each model's weights
            weight_agreement(analysis, perm, states[0], state)
            for perm, state in zip(perms, states[1:])
        ]
        if states
        else []
    )
    return Alignment(
        analysis,
        plan,
        perms,
        reports,
        stats,
        calibration,
        timings,
        sources,
        method.name,
        consensus,
        agreement,
        extras if any(extras) else [],
        unmerges=unmerges,
        zip_reports=zip_reports,
    )


def _zip(analysis: Analysis, plan: Plan, stats: Statistics | None, perms: list) -> tuple:
    """The zipped parts' unmerge matrices of every model and their reports, from statistics
    that pair every model with every model, itself included."""
    if stats is None:
        raise PolicyError("transform: zip needs calibration data; pass --calib PATH")
    zipit = plan.policy.zipit
    try:
        return zip_plan(analysis, plan, stats, perms, alpha=zipit.alpha, beta=zipit.beta)
    except KeyError as e:
        raise PolicyError(
            "transform: zip needs each model's statistics with itself and with every other "
            f"model, and these statistics lack them ({e.args[0]}); collect them again with "
            "this policy"
        ) from None


def _consensus(
    analysis: Analysis,
    plan: Plan,
    perms: list,
    reports: list,
    stats: Statistics | None,
    states: list,
) -> tuple[list, list[dict]]:
    """Consensus refinement (:func:`graphperm.solve.refine`) of every model's permutation; each
    model's report rows are brought up to date (moved fraction; correlation with A after)."""
    n = len(perms) + 1
    perms, history = refine(
        analysis,
        plan,
        perms,
        stats=stats,
        states=states,
        weights=plan.policy.base_weights(n),
        rounds=plan.policy.consensus_rounds,
    )
    for k, (perm, rows) in enumerate(zip(perms, reports)):
        for r in rows:
            r.moved_fraction = perm.moved_fraction(r.name)
            if stats is not None and r.corr_after is not None:
                r.corr_after = correlation_with_a(analysis, plan, stats, perm, r.name, k + 1)
    return perms, [h.to_dict() for h in history]


def enough_data(analysis: Analysis, plan: Plan, threshold: float):
    """A ``stop`` callback for :func:`graphperm.stats.calibrate`: true once every group's
    split-half agreement (every model against A) has been at least ``threshold`` at two checks
    in a row."""
    method = get_method(plan.policy.method)
    streak = [0]

    def stop(stats: Statistics) -> bool:
        models = stats.parts[0][stats.site_keys()[0]].models if stats.site_keys() else 2
        worst = 1.0
        for k in range(1, models):
            halves = split_half_agreement(method, Problem(analysis, plan, k, stats))
            worst = min(worst, *halves.values()) if halves else worst
        log.info("after %d items: lowest split-half agreement %.4f", stats.items, worst)
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

    ``weight_a`` overrides the policy's weight of A. ``inplace`` permutes B's weights and
    overwrites A's with the merge instead of making copies (what the command line does, to keep
    memory at two models); the alignment is never changed.
    """
    weights = None if weight_a is None else [weight_a, 1.0 - weight_a]
    return merge_all(alignment, [a, b], weights=weights, inplace=inplace)


def merge_all(
    alignment: Alignment,
    models: Sequence[LoadedModel],
    *,
    weights: Sequence[float] | None = None,
    inplace: bool = False,
) -> MergeResult:
    """Permute every model after A into A's basis, check each still computes what it computed,
    and interpolate them all: ``Σ_m w_m · model_m`` (``weights``: A first; default the
    policy's). When parts are rotated, every model (A included) first has the norms those
    rotations pass through folded into their readers, so the weights still line up."""
    if len(models) != alignment.models:
        raise PolicyError(
            f"the alignment is for {alignment.models} models, {len(models)} were given"
        )
    policy = alignment.policy
    if weights is not None:
        policy = policy.with_weights(list(weights))
    n = len(models)
    states, checks, timings = aligned_states(
        alignment, models, verify=policy.verify, inplace=inplace, weights=policy.base_weights(n)
    )
    targets = None
    if policy.repair.enabled:  # measured before the combination overwrites A (inplace)
        t = time.perf_counter()
        targets = repair_targets(
            alignment.analysis,
            models[0].module,
            states,
            _repair_batches(alignment, policy.repair.items),
            weights=policy.base_weights(n),
            groups={t.group for t in alignment.plan.targets} or None,
        )
        timings["repair_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged = combine(
        states, lambda key: policy.weights_for(key, n), policy.combine, inplace=inplace
    )
    timings["interpolate_s"] = time.perf_counter() - t
    rest = {}
    if models[0].partial:  # the untraced rest (a decoder): its inputs stay fixed, so plainly
        rests = [untraced(m) for m in models]
        rest = combine(
            rests, lambda key: policy.weights_for(key, n), policy.combine, inplace=inplace
        )
    repaired = None
    if targets is not None:
        t = time.perf_counter()
        merged, repaired = repair_state(
            models[0].module,
            merged,
            targets,
            _repair_batches(alignment, policy.repair.items),
            passes=policy.repair.passes,
        )
        timings["repair_s"] += time.perf_counter() - t
    return MergeResult(
        alignment,
        merged,
        models[0],
        policy.base_weights(n),
        checks,
        timings,
        repair=repaired,
        rest=rest,
        zip_errors=timings.pop("zip_errors", []),
    )


def aligned_states(
    alignment: Alignment,
    models: Sequence[LoadedModel],
    *,
    verify: bool,
    inplace: bool = False,
    weights: Sequence[float] | None = None,
) -> tuple[list[dict], list, dict]:
    """Every model's state in A's basis (A folded, the others permuted; with ``inplace`` the
    models' own tensors), the checks that each permuted model computes what it computed
    (``verify``), and the time each took: what every combination starts from.

    With zipped parts (``transform: zip``) every model, A included, then gets its merge and
    unmerge matrices for the models' ``weights`` (default: the policy's), so that the states'
    weighted sum is ZipIt!'s merge; the checks cover the permutations only (a zip is not
    exact), and ``timings["zip_errors"]`` holds each model's merged-then-unmerged output's
    relative error on calibration batches instead."""
    if len(models) != alignment.models:
        raise PolicyError(
            f"the alignment is for {alignment.models} models, {len(models)} were given"
        )
    timings = {"permute_s": 0.0, "verify_s": 0.0}
    indexer = Indexer(alignment.analysis)
    inputs = check_inputs(alignment.analysis)
    rotated = set().union(*(p.rotated for p in alignment.perms))
    folds = folds_for(alignment.analysis, rotated)
    states, checks = [fold_state(models[0].state_dict(), folds, inplace=inplace)], []
    for k, (model, perm) in enumerate(zip(models[1:], alignment.perms)):
        checking = verify and bool(perm.perms)
        t = time.perf_counter()
        reference = None
        if checking:  # the model as the user gave it, before any folding, when known
            known = alignment.references
            reference = known[k] if known else outputs(model.module, inputs)
        state = permute_state(indexer, model.state_dict(), perm, inplace=inplace)
        permuted = model.module if inplace else None
        if checking and not inplace:
            permuted = copy.deepcopy(model.module)
            permuted.load_state_dict(state)
        timings["permute_s"] += time.perf_counter() - t
        if checking:
            t = time.perf_counter()
            checks.append(check_permuted(alignment.analysis, perm, reference, permuted, inputs))
            timings["verify_s"] += time.perf_counter() - t
        del permuted
        states.append(state)
    if not checks:
        del timings["verify_s"]
    if alignment.unmerges:
        t = time.perf_counter()
        n = len(models)
        weights = list(weights) if weights is not None else alignment.policy.base_weights(n)
        merges = merge_matrices(alignment.unmerges, weights)
        axes = input_axes(alignment.analysis)
        batches = alignment.batches or [check_inputs(alignment.analysis)]
        errors = alignment.zip_errors  # weights do not change them: measured once
        for m, model in enumerate(models):
            if len(errors) <= m:
                own = own_merge(alignment.unmerges[m])
                unmerge = alignment.unmerges[m]
                errors.append(_zip_error(indexer, model, states[m], own, unmerge, axes, batches))
            states[m] = zip_state(
                indexer, states[m], merges[m], alignment.unmerges[m], inputs=axes, inplace=inplace
            )
        timings["zip_s"] = time.perf_counter() - t
        timings["zip_errors"] = list(errors)
    return states, checks, timings


def _zip_error(
    indexer: Indexer,
    model: LoadedModel,
    state: dict,
    merge: dict,
    unmerge: dict,
    axes: set,
    batches: list,
) -> float | None:
    """Relative error (Frobenius, over every batch and output) of ``model`` merged with its own
    merge matrices and unmerged, against ``model`` itself (None: an output is zipped)."""
    from torch.func import functional_call

    zipped = zip_state(indexer, state, merge, unmerge, inputs=axes)
    analysis = indexer.analysis
    moved = {g for g, _ in unmerge}
    names = analysis.traced.program.graph_signature.user_outputs
    for name in names:
        if name in analysis.coupling.tensors:
            classes = analysis.coupling.classes(name)
            if any(indexer.touches(c, moved) for c in classes):
                return None
    diff = total = 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = dict(getattr(batch, "inputs", batch))
            ref = flat_outputs(functional_call(model.module, state, (), inputs, tie_weights=False))
            got = flat_outputs(functional_call(model.module, zipped, (), inputs, tie_weights=False))
            for r, g in zip(ref, got):
                if r.is_floating_point():
                    diff += float((g.double() - r.double()).square().sum())
                    total += float(r.double().square().sum())
    return (diff / total) ** 0.5 if total > 0 else 0.0


def _repair_batches(alignment: Alignment, items: int) -> list:
    if not alignment.batches:
        raise PolicyError(
            "repair needs calibration data kept from the alignment: run `graphperm merge` "
            "with --calib (apply --merge-into and solve cannot repair), or set repair: false"
        )
    out, seen = [], 0
    for batch in alignment.batches:
        out.append(batch)
        seen += next(iter(batch.values())).shape[0]
        if seen >= items:
            break
    return out


def untraced(model: LoadedModel) -> dict:
    """The saved model's tensors outside the traced module (full keys), without those it
    shares with the traced module (they are interpolated with it)."""
    inside = list(model.module.state_dict().values())
    return {
        k: t
        for k, t in model.model.state_dict().items()
        if not k.startswith(model.prefix) and not any(same_tensor(t, i) for i in inside)
    }
