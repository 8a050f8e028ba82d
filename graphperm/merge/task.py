"""Task arithmetic: models fine-tuned (or distilled) from one base, combined through their task
vectors τ_m = θ_m − θ_base: ``θ_base + scale · Σ_m w_m τ_m`` (optionally TIES or DARE on the
task vectors; :mod:`graphperm.merge.combine`). No alignment: the models share the base's basis.

Each model's distance from the base is reported; a model that does not come from the base (its
weight matrices are nearly orthogonal to the base's) gets a warning, since its "task vector" is
then the whole model.

Example:
    >>> import torch
    >>> from graphperm.trace import load_model
    >>> base = load_model("builtin:hubert-tiny")
    >>> result = task_arithmetic(base, [load_model("builtin:hubert-tiny")], weights=[1.0])
    >>> all(torch.equal(v, base.state_dict()[k]) for k, v in result.state.items())
    True
    >>> result.distances[0].relative_distance
    0.0
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from graphperm.errors import MismatchError, PolicyError
from graphperm.merge.checks import check_same_architecture, model_letter
from graphperm.merge.combine import combine
from graphperm.policy import Combine, Policy
from graphperm.trace import LoadedModel

__all__ = [
    "FROM_BASE_COSINE",
    "TaskArithmeticResult",
    "TaskDistance",
    "task_arithmetic",
    "task_arithmetic_sweep",
    "task_distance",
]

log = logging.getLogger(__name__)

#: Below this median cosine between a model's weight matrices and the base's, the model is
#: taken not to come from the base (independent initialisations give about 0).
FROM_BASE_COSINE = 0.3


@dataclass
class TaskDistance:
    """How far one model is from the base."""

    source: str
    relative_distance: float  # ‖θ − θ_base‖ / ‖θ_base‖ over floating-point tensors
    median_cosine: float  # median over weight matrices of cos(θ, θ_base)
    changed_tensors: float  # fraction of floating-point tensors that differ at all

    @property
    def from_base(self) -> bool:
        return self.median_cosine >= FROM_BASE_COSINE

    def to_dict(self) -> dict:
        return {
            "model": self.source,
            "relative_distance": round(self.relative_distance, 6),
            "median_cosine": round(self.median_cosine, 6),
            "changed_tensors": round(self.changed_tensors, 6),
            "from_base": self.from_base,
        }


@dataclass
class TaskArithmeticResult:
    """The combined weights (keys relative to the traced module; saved with model A's class
    and config), and how far each model was from the base."""

    state: dict[str, torch.Tensor]
    model_a: LoadedModel
    base: str
    sources: tuple[str, ...]
    weights: list[float]
    combine: Combine
    distances: list[TaskDistance]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def weight_a(self) -> float:
        return self.weights[0]

    def to_dict(self) -> dict:
        """The content of ``merge_report.json``."""
        return {
            "kind": "task_arithmetic",
            "base": self.base,
            "models": list(self.sources),
            "model_class": type(self.model_a.module).__name__,
            "weights": self.weights,
            "combine": self.combine.model_dump(mode="json"),
            "distance_from_base": [d.to_dict() for d in self.distances],
            "warnings": self.warnings,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def task_distance(base: dict[str, torch.Tensor], model: LoadedModel) -> TaskDistance:
    """``model``'s distance from the ``base`` state (same keys and shapes)."""
    state = model.state_dict()
    diff2 = norm2 = 0.0
    cosines, changed, total = [], 0, 0
    with torch.no_grad():
        for key, b in base.items():
            if not b.is_floating_point():
                continue
            x, b64 = state[key].double(), b.double()
            diff2 += float((x - b64).pow(2).sum())
            norm2 += float(b64.pow(2).sum())
            total += 1
            changed += int(not torch.equal(state[key], b))
            if b.dim() >= 2:
                den = float(x.norm() * b64.norm())
                cosines.append(float((x * b64).sum()) / den if den > 0 else 1.0)
    return TaskDistance(
        model.source,
        (diff2 / norm2) ** 0.5 if norm2 > 0 else 0.0,
        statistics.median(cosines) if cosines else 1.0,
        changed / total if total else 0.0,
    )


def task_arithmetic_sweep(
    base: LoadedModel,
    models: Sequence[LoadedModel],
    weights: Sequence[Sequence[float]],
    *,
    policy: Policy | None = None,
    inplace: bool = False,
) -> Iterator[TaskArithmeticResult]:
    """One :class:`TaskArithmeticResult` per weight vector (one weight per model), lazily; the
    models are checked and measured once. ``policy`` gives the combination (its per-module
    weight overrides are refused). With ``inplace`` the last result overwrites model A's
    tensors."""
    policy = policy or Policy()
    if policy.weights:
        raise PolicyError(
            "per-module weights (the policy's 'weights') are not supported with a base model; "
            "remove them or merge without --base"
        )
    for k, m in enumerate(models):
        try:
            check_same_architecture(base, m)
        except MismatchError as err:
            raise MismatchError(
                f"model {model_letter(k)} ({m.source}) does not have the architecture of the "
                f"base {base.source} (below, A is the base and B that model): {err}"
            ) from None
    t = time.perf_counter()
    base_state = base.state_dict()
    distances = [task_distance(base_state, m) for m in models]
    warnings = []
    for k, d in enumerate(distances):
        if not d.from_base:
            warnings.append(
                f"model {model_letter(k)} ({d.source}) does not seem to come from the base "
                f"{base.source} (median cosine of its weight matrices with the base's "
                f"{d.median_cosine:.2f}); its task vector is the whole model"
            )
            log.info("%s", warnings[-1])  # result.warnings: the caller shows them
    measured = time.perf_counter() - t
    states = [m.state_dict() for m in models]
    n = len(models)
    for k, w in enumerate(weights):
        if len(w) != n:
            raise ValueError(f"{len(w)} weights for {n} models")
        t = time.perf_counter()
        merged = combine(
            states,
            lambda key, w=list(w): w,
            policy.combine,
            base=base_state,
            inplace=inplace and k == len(weights) - 1,
        )
        yield TaskArithmeticResult(
            merged,
            models[0],
            base.source,
            tuple(m.source for m in models),
            list(w),
            policy.combine,
            distances,
            warnings,
            {"distance_s": measured, "combine_s": time.perf_counter() - t},
        )


def task_arithmetic(
    base: LoadedModel,
    models: Sequence[LoadedModel],
    *,
    weights: Sequence[float] | None = None,
    combine_: Combine | None = None,
    policy: Policy | None = None,
    inplace: bool = False,
) -> TaskArithmeticResult:
    """``θ_base + scale · Σ_m w_m (θ_m − θ_base)`` over the traced modules of ``models``
    (``weights``: one per model, default equal; ``combine_``: TIES or DARE on the task
    vectors, default plain sums; else the ``policy``'s)."""
    policy = policy or Policy()
    if combine_ is not None:
        policy = policy.model_copy(update={"combine": combine_})
    w = list(weights) if weights is not None else [1.0 / len(models)] * len(models)
    return next(task_arithmetic_sweep(base, models, [w], policy=policy, inplace=inplace))
