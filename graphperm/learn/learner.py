"""Learned alignment: the transforms of model B optimised end to end through the merged model.

Layer-by-layer alignment chooses each part's transform from that part's own statistics; here the
transforms of every aligned part are chosen together, for what the *merged* model computes. The
default objective needs no labels: the merged model ``λ·A + (1 − λ)·B′`` (``λ`` drawn around the
requested weight at every step) should reproduce ``λ·f_A(x) + (1 − λ)·f_B′(x)``, the parents'
outputs interpolated in A's basis, on calibration data. A user's own loss
(``loss_fn(model, batch)``, e.g. the model's training loss on labelled batches) replaces it
through the Python API, and a causal language model's own next-token loss on the calibration
text (``learn.objective: next_token``: no labels either) replaces it from a policy.

The transforms stay exact (permutations through a straight-through estimator, rotations on the
orthogonal group: :mod:`graphperm.learn.transforms`); part of the data is held out, and the
transforms that did best there (the starting ones included) are returned, so learning never
leaves the merge worse on held-out data than where it started.

Example:
    >>> from graphperm.trace import load_model
    >>> from graphperm.merge import align
    >>> a, b = load_model("builtin:bert-tiny"), load_model("builtin:bert-tiny", seed=1)
    >>> batches = [{"input_ids": torch.randint(5, 90, (2, 12))} for _ in range(4)]
    >>> start = align(a, b, "weights")
    >>> perm, report = learn_alignment(
    ...     start.analysis, [a, b], start.perms[0], batches, Learn(steps=3), weight_a=0.5)
    >>> report.steps, report.heldout_after <= report.heldout_before
    (3, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from graphperm.analysis import Analysis
from graphperm.apply import Indexer, Permutation, flat_outputs
from graphperm.errors import PolicyError
from graphperm.learn.objectives import check_causal_lm, next_token_loss
from graphperm.learn.transforms import LearnedTransforms
from graphperm.policy import Learn, Plan
from graphperm.solve import Problem, weight_matching
from graphperm.stats import SiteRunner
from graphperm.trace import LoadedModel

__all__ = ["LearnReport", "learn_alignment"]

log = logging.getLogger(__name__)

LossFn = Callable[[Callable[..., object], dict[str, torch.Tensor]], torch.Tensor]

#: the parents' references (outputs and site values of every learning batch) are kept in
#: memory up to this size, else run again at every step: HuBERT base's sites on 128 clips of
#: 4 s would take ~19 GB
REFERENCE_BYTES = 2 << 30


@dataclass
class LearnReport:
    """What learning did (a block of ``merge_report.json``)."""

    objective: str
    steps: int
    best_step: int  # 0: the starting transforms were kept
    train_before: float
    train_after: float
    heldout_before: float
    heldout_after: float
    train_batches: int
    heldout_batches: int
    # train_before/after are measured on the first this many training batches (as many as are
    # held out: evaluating them all twice cost more than learning on a large model)
    train_batches_evaluated: int
    # steps whose objective or gradient was not finite (NaN, inf): not applied
    skipped_steps: int = 0
    learned_parts: list[str] = field(default_factory=list)
    fixed_parts: dict[str, str] = field(default_factory=dict)  # part -> why it was not learned
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None  # learning on a GPU: the most its memory held
    # with learn.budget: the floating-point operations (matrix products and convolutions,
    # counted by torch's FlopCounterMode) allowed, spent, and those of one step
    flops_allowed: float | None = None
    flops_spent: float | None = None
    flops_per_step: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def learn_alignment(
    analysis: Analysis,
    models: Sequence[LoadedModel],
    start: Permutation,
    batches: Sequence[dict[str, torch.Tensor]],
    settings: Learn,
    *,
    weight_a: float,
    loss_fn: LossFn | None = None,
    progress: bool = False,
    plan: Plan | None = None,
    calibration_items: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[Permutation, LearnReport]:
    """Optimise ``start`` (model B's transforms into A's basis) for the merged model.

    ``models`` are A and B (weights as the pipeline holds them: folded when parts rotate);
    ``batches`` are model inputs (with labels for ``loss_fn``); ``loss_fn(model, batch)`` gets a
    callable that runs the merged model on keyword inputs and returns a scalar loss.
    ``plan`` (what is aligned, and how) is needed by ``settings.estimator == "weights"``.
    With ``settings.budget`` and ``calibration_items`` (the items the calibration ran through
    both models), learning's floating-point operations (references, evaluations, steps with
    their transforms and backward passes, all counted as they run) are capped at ``budget``
    times the calibration's forwards; the steps beyond are not run.
    On ``device`` (``"cuda"``: a GPU) the weights, batches, references and transforms live
    there for the whole optimisation (A's module is moved there and back); linear
    assignments are solved on the CPU, and the transforms come back on the CPU.
    """
    dev = torch.device(device)
    with _placed(models[0].module, dev):
        perm, report = _learn(
            analysis,
            models,
            start.to(dev),
            [_to_device(b, dev) for b in batches],
            settings,
            weight_a=weight_a,
            loss_fn=loss_fn,
            progress=progress,
            plan=plan,
            calibration_items=calibration_items,
            device=dev,
        )
    return perm.to("cpu"), report


def _learn(
    analysis: Analysis,
    models: Sequence[LoadedModel],
    start: Permutation,
    batches: Sequence,
    settings: Learn,
    *,
    weight_a: float,
    loss_fn: LossFn | None,
    progress: bool,
    plan: Plan | None,
    calibration_items: int,
    device: torch.device,
) -> tuple[Permutation, LearnReport]:
    """:func:`learn_alignment` with everything on ``device`` already."""
    if len(models) != 2:
        raise PolicyError("learned alignment brings one model into A's basis at a time")
    if len(batches) < 2:
        raise PolicyError(
            "learned alignment needs at least two calibration batches (one is held out); "
            "raise learn.items or pass more data"
        )
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    indexer = Indexer(analysis)
    coupling = analysis.coupling
    module = models[0].module
    state_b_cpu = {k: v.detach().cpu() for k, v in models[1].state_dict().items()}  # matching
    state_a = {k: v.detach().to(device) for k, v in models[0].state_dict().items()}
    state_b = {k: v.to(device) for k, v in state_b_cpu.items()}
    moving = {
        name: coupling.classes(key)
        for key, name in coupling.state.items()
        if name in state_b and state_b[name].is_floating_point()
    }
    keeps = {
        (g.name, p.name): analysis.symmetry(g.name, p.name).keeps_ones
        for g in analysis.groups
        for p in g.parts
    }
    # score matrices move B's weights as matrices, which a grouped convolution's per-block
    # part does not take; the proxy weights' matching gives index permutations, which it does
    frozen = _unlearnable(indexer, start, state_b, moving) if settings.estimator == "scores" else {}
    params = LearnedTransforms(start, keeps, frozen=set(frozen))
    n_held = max(1, round(len(batches) * settings.holdout))
    train, held = list(batches[:-n_held]), list(batches[-n_held:])
    names = list(analysis.traced.program.graph_signature.user_outputs)
    runner = None
    objective = "loss_fn" if loss_fn is not None else settings.objective
    if objective == "next_token":  # the model's own loss on the calibration text
        check_causal_lm(models[0].module)
        loss_fn = next_token_loss
    if objective == "sites" and not _traced_shape(analysis, batches):
        log.warning(
            "learn.objective 'sites' runs the analysed graph, exported for inputs of another "
            "shape than these batches: the outputs alone are matched"
        )
        objective = "outputs"
    if objective == "sites":
        if plan is None:
            raise PolicyError("learn.objective 'sites' needs the plan (where the sites are)")
        sites = sorted({s.key for s in plan.sites()} - set(names))
        runner = SiteRunner(analysis.traced.program, [*names, *sites], device=device)
        wanted = set(runner.input_names)
        lacking = sorted(wanted - set(_inputs(batches[0])))
        if lacking:
            raise PolicyError(
                f"learn.objective 'sites' runs the traced graph, which takes {sorted(wanted)}; "
                f"the batches lack {lacking}: pass them, or use objective 'outputs'"
            )
    else:
        sites = []
    budget = _Budget(settings, calibration_items)
    cached: list[tuple[list, list]] = []

    def parents(i: int) -> tuple[list, list]:
        """A's and B's outputs (and site values) on batch ``i``: kept when they fit in
        ``REFERENCE_BYTES``, else run again when asked (the same values)."""
        if cached:
            return cached[i]
        with torch.no_grad():
            return (
                _outputs(module, runner, state_a, batches[i]),
                _outputs(module, runner, state_b, batches[i]),
            )

    if loss_fn is None:  # the parents' outputs (and site values)
        with budget.count() as first:
            ref = parents(0)
        budget.per_item(first, 2 * _items(batches[0]))
        size = sum(t.numel() * t.element_size() for t in [*ref[0], *ref[1]])
        if size * len(batches) <= REFERENCE_BYTES:
            with budget.count():
                cached.extend([ref, *(parents(i) for i in range(1, len(batches)))])
        else:  # run again with every step and evaluation (and counted there)
            log.info(
                "the parents' references of %d batches would take %.1f GB: run again at "
                "every step instead of kept",
                len(batches),
                size * len(batches) / 1e9,
            )
        del ref
    elif budget.on:  # one plain forward of a batch, for the cost of an item
        with torch.no_grad(), budget.count() as one:
            loss_fn(lambda **kw: _call(module, state_a, kw), batches[0])
        budget.per_item(one, _items(batches[0]))

    def transformed(perm: Permutation) -> dict[str, torch.Tensor]:
        b_prime = dict(state_b)
        for name, classes in moving.items():
            b_prime[name] = indexer.permute(state_b[name], classes, perm)
        return b_prime

    def run(perm: Permutation | dict, lam: float, i: int, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            b_prime = perm if isinstance(perm, dict) else transformed(perm)
            merged = {
                k: (lam * v + (1 - lam) * b_prime[k]) if v.is_floating_point() else v
                for k, v in state_a.items()
            }
            batch = batches[i]
            if loss_fn is not None:
                return loss_fn(lambda **kw: _call(module, merged, kw), batch)
            ref_a, ref_b = parents(i)
            got = _outputs(module, runner, merged, batch, grad=grad)
            out = _distance(got, ref_a, ref_b, names, indexer, hard, lam)
            if not sites:
                return out
            n = len(names)
            inner = _distance(got[n:], ref_a[n:], ref_b[n:], sites, indexer, hard, lam)
            return 0.5 * (out + inner)

    def evaluate(indices: Sequence[int]) -> float:
        with torch.no_grad():
            b_prime = transformed(hard)  # once for all the batches
            return float(
                sum(float(run(b_prime, weight_a, i, False)) for i in indices) / max(1, len(indices))
            )

    hard = params.hard()
    train_idx = list(range(len(train)))
    held_idx = list(range(len(train), len(batches)))
    shown = train_idx[: len(held_idx)]  # the training objective reported: as many batches
    with budget.count() as train_eval:
        train_before = evaluate(shown)
    with budget.count() as held_eval:
        held_before = evaluate(held_idx)
    budget.spent += train_eval.flops  # the last evaluation of the training batches, to come
    steps = settings.steps if budget.allows(held_eval.flops) else 0
    best = (held_before, 0, hard)
    proxy: dict[str, torch.Tensor] = {}
    if settings.estimator == "weights":  # git re-basin's straight-through estimator
        if plan is None:
            raise PolicyError("learn.estimator 'weights' needs the plan (weight matching)")
        if settings.proxy == "a":  # git re-basin: B′ is drawn toward A from the first step
            origin = state_a
        else:
            with torch.no_grad():
                origin = transformed(hard)
        proxy = {n: origin[n].detach().clone().requires_grad_() for n in moving}
        opt = torch.optim.Adam(list(proxy.values()), lr=settings.lr)
    else:
        opt = torch.optim.Adam(params.parameters(), lr=settings.lr)

    def matched() -> Permutation:
        """B's transforms that bring it closest to the proxy weights (weight matching)."""
        proxy_state = {**state_b_cpu, **{n: v.detach().cpu() for n, v in proxy.items()}}
        problem = Problem(analysis, plan, 1, states=[proxy_state, state_b_cpu])
        return _keep_frozen(weight_matching(problem), start, frozen).to(device)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="learning the alignment", unit="step")
        bar.set_postfix(heldout=f"{held_before:.4g}")  # the start's, until the first evaluation
    t_steps = time.perf_counter()
    step = skipped = 0
    while step < steps:
        step += 1
        lam = min(1.0, max(0.0, weight_a + gen.uniform(-settings.spread, settings.spread)))
        i = gen.choice(train_idx)
        with budget.count() if step == 1 else contextlib.nullcontext() as counted:
            if proxy:
                hard = matched()
                with torch.no_grad():
                    b_hard = transformed(hard)
                soft = {**b_hard, **{n: v + (b_hard[n] - v).detach() for n, v in proxy.items()}}
            else:
                soft, hard = params.both()
            loss = run(soft, lam, i, True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if _finite(loss, opt):
            opt.step()
        else:  # one bad batch or draw must not poison every later step (Adam's moments)
            skipped += 1
            log.warning("learning step %d: non-finite objective or gradient, step skipped", step)
        if counted is not None:  # the first step's cost caps the number of steps
            steps = budget.steps(steps, counted.flops, held_eval.flops / settings.eval_every)
            if bar is not None:
                bar.total = steps
        if settings.schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if step % settings.eval_every == 0 or step == steps:
            hard = matched() if proxy else params.hard()
            score = evaluate(held_idx)
            if score < best[0]:
                best = (score, step, hard)
            if bar is not None:
                bar.set_postfix(
                    train=f"{loss.detach().item():.4g}",
                    heldout=f"{score:.4g}",
                    best=f"{best[0]:.4g} (step {best[1]})",
                )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    per_step = (time.perf_counter() - t_steps) / max(1, steps)
    held_after, best_step, hard = best
    train_after = evaluate(shown)
    report = LearnReport(
        objective=objective,
        steps=steps,
        best_step=best_step,
        train_before=train_before,
        train_after=train_after,
        heldout_before=held_before,
        heldout_after=held_after,
        train_batches=len(train),
        heldout_batches=len(held),
        train_batches_evaluated=len(shown),
        skipped_steps=skipped,
        learned_parts=[f"{g}/{p}" for g, p in params.names],
        fixed_parts=frozen_reasons(frozen),
        seconds=time.perf_counter() - t0,
        seconds_per_step=per_step,
        peak_rss_mb=_peak_rss_mb(),
        peak_gpu_mb=(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        **budget.report(),
    )
    log.info(
        "learned alignment: held-out objective %.4g -> %.4g (best at step %d of %d)",
        held_before,
        held_after,
        best_step,
        steps,
    )
    return hard, report


def _finite(loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
    """Whether a step's objective and every gradient it left are finite."""
    if not torch.isfinite(loss.detach()).all():
        return False
    return all(
        p.grad is None or bool(torch.isfinite(p.grad).all())
        for group in opt.param_groups
        for p in group["params"]
    )


def _traced_shape(analysis: Analysis, batches: Sequence) -> bool:
    """Whether every batch has the shapes of the analysed graph's example inputs."""
    want = {k: tuple(v.shape) for k, v in analysis.traced.inputs.items()}
    return all(
        {k: tuple(v.shape) for k, v in _inputs(b).items() if k in want} == want for b in batches
    )


class _Counted:
    """The floating-point operations counted inside one ``with``."""

    flops = 0.0


class _Budget:
    """``learn.budget`` in floating-point operations: ``budget`` × the calibration's forwards
    (two models × ``calibration_items``, each an item's forward as counted on the references),
    against everything learning runs. Off (never capping) without a budget."""

    def __init__(self, settings: Learn, calibration_items: int) -> None:
        self.on = settings.budget is not None and calibration_items > 0
        self.factor = (settings.budget or 0.0) * 2 * calibration_items
        self.allowed: float | None = None
        self.spent = 0.0
        self.per_step: float | None = None

    @contextlib.contextmanager
    def count(self):
        """Count what runs inside (added to what was spent); yields a :class:`_Counted`."""
        counted = _Counted()
        if not self.on:
            yield counted
            return
        mode = FlopCounterMode(display=False)
        with mode:
            yield counted
        counted.flops = float(mode.get_total_flops())
        self.spent += counted.flops

    def per_item(self, counted: _Counted, items: int) -> None:
        """The cost of one item's forward: ``counted`` ran ``items`` of them."""
        if self.on:
            self.allowed = self.factor * counted.flops / max(1, items)

    def allows(self, more: float) -> bool:
        """Whether ``more`` can still be spent."""
        return not self.on or self.allowed is None or self.spent + more <= self.allowed

    def steps(self, wanted: int, step: float, per_step_evaluation: float) -> int:
        """Steps (the first one done, counted at ``step``) within the budget."""
        if not self.on or self.allowed is None:
            return wanted
        self.per_step = step
        per = step + per_step_evaluation
        more = int(max(0.0, self.allowed - self.spent) // per) if per > 0 else wanted
        capped = max(1, min(wanted, 1 + more))
        self.spent += (capped - 1) * per
        if capped < wanted:
            log.info("learn.budget: %d steps of %d", capped, wanted)
        return capped

    def report(self) -> dict:
        if not self.on:
            return {}
        return {
            "flops_allowed": self.allowed,
            "flops_spent": self.spent,
            "flops_per_step": self.per_step,
        }


def _items(batch) -> int:
    """Examples in a batch of model inputs (the leading size of its first tensor)."""
    inputs = _inputs(batch)
    first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
    return 1 if first is None or first.ndim == 0 else int(first.shape[0])


@contextlib.contextmanager
def _placed(module: torch.nn.Module, device: torch.device):
    """``module`` on ``device`` inside (its buffers outside the state dict, such as position
    ids, must be where the weights are), back where it was afterwards."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    home = first.device if first is not None else device
    if home == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


def _to_device(batch: object, device: torch.device) -> object:
    """A batch (a dict of model inputs, or a :class:`~graphperm.inputs.ModelBatch`) with its
    tensors on ``device``."""
    if device.type == "cpu":
        return batch
    if dataclasses.is_dataclass(batch):
        moved = {
            f.name: _to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch)
        }
        return dataclasses.replace(batch, **moved)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _inputs(batch: dict) -> dict:
    """Model inputs of a batch (a :class:`~graphperm.inputs.ModelBatch` or a dict)."""
    return dict(getattr(batch, "inputs", batch))


def _outputs(
    module: torch.nn.Module,
    runner: SiteRunner | None,
    state: dict,
    batch: dict,
    *,
    grad: bool = False,
) -> list[torch.Tensor]:
    """The model's flat outputs on ``batch``, followed by the runner's site values if any."""
    if runner is None:
        return flat_outputs(_call(module, state, _inputs(batch)))
    return runner(state, _inputs(batch), grad=grad)


def _call(module: torch.nn.Module, state: dict, inputs: dict) -> object:
    """``module`` run on ``inputs`` with the weights of ``state``. A state dict names a tied
    tensor once per module that holds it (a language model's input embedding and output head),
    and a merged or transformed state holds one value under each name (equal values, but not
    one tensor): each name is set on its own (``tie_weights=False``) rather than refused."""
    return functional_call(module, state, (), inputs, tie_weights=False)


def _distance(
    got: list[torch.Tensor],
    ref_a: list[torch.Tensor],
    ref_b: list[torch.Tensor],
    names: Sequence[str],
    indexer: Indexer,
    perm: Permutation,
    lam: float,
) -> torch.Tensor:
    """Mean squared distance of the merged model's floating outputs from the parents' outputs
    interpolated in A's basis, each relative to that target's mean square."""
    known = indexer.analysis.coupling.tensors
    total = torch.zeros((), dtype=torch.float64, device=got[0].device if got else None)
    count = 0
    for name, g, a, b in zip(names, got, ref_a, ref_b):
        if not g.is_floating_point():
            continue
        b_prime = indexer.permute_value(name, b, perm) if name in known else b
        target = (lam * a.double() + (1 - lam) * b_prime.double()).detach()
        scale = target.pow(2).mean().clamp_min(1e-12)
        total = total + (g.double() - target).pow(2).mean() / scale
        count += 1
    return total / max(1, count)


def _unlearnable(
    indexer: Indexer,
    start: Permutation,
    state: dict[str, torch.Tensor],
    moving: dict[str, list],
) -> dict[tuple[str, str], str]:
    """Parts whose transform cannot be applied as a matrix to every tensor it moves (a part
    permuted per block of another part that a tensor holds only inside a product, as a grouped
    convolution's weight): they keep their starting transform."""
    params = LearnedTransforms(start, {})
    soft = params.soft()
    try:
        with torch.no_grad():
            for name, classes in moving.items():
                indexer.permute(state[name], classes, soft)
        return {}
    except RuntimeError:
        pass
    frozen: dict[tuple[str, str], str] = {}
    for g, p, _ in start:
        only = Permutation({g: {p: soft.get(g, p)}})
        try:
            with torch.no_grad():
                for name, classes in moving.items():
                    indexer.permute(state[name], classes, only)
        except RuntimeError as err:
            frozen[(g, p)] = str(err)
    return frozen


def _keep_frozen(
    perm: Permutation, start: Permutation, frozen: dict[tuple[str, str], str]
) -> Permutation:
    """``perm`` restricted to ``start``'s parts, with the frozen ones as they started."""
    out = Permutation()
    for g, p, t in start:
        got = perm.get(g, p)
        out.set(g, p, t if (g, p) in frozen or got is None else got)
    return out


def frozen_reasons(frozen: dict[tuple[str, str], str]) -> dict[str, str]:
    return {f"{g}/{p}": why for (g, p), why in frozen.items()}


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, AttributeError):
        return None
