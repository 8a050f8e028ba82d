"""A sweep of weights: many combinations of one alignment (one calibration, one solve).

Every model is brought into A's basis once; each weight vector is then one combination of the
same states, so each result equals, bit for bit, a separate :func:`merge_all` at that weight.
With zipped parts (``transform: zip``) the merge matrices depend on the weights, so each weight
is its own :func:`merge_all` (still one calibration and one solve).

Example:
    >>> from graphperm.merge import align
    >>> from graphperm.trace import load_model
    >>> a, b = load_model("builtin:hubert-tiny"), load_model("builtin:hubert-tiny", seed=1)
    >>> [r.weight_a for r in merge_sweep(align(a, b, "linear"), [a, b], [[0.9, 0.1], [0.5, 0.5]])]
    [0.9, 0.5]
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from graphperm.merge.combine import combine
from graphperm.merge.pipeline import aligned_states, merge_all, untraced
from graphperm.merge.results import Alignment, MergeResult
from graphperm.trace import LoadedModel

__all__ = ["merge_sweep", "sweep_weights"]


def sweep_weights(weights_a: Sequence[float], models: int) -> list[list[float]]:
    """One weight vector per weight of A, the others sharing the rest equally.

    Example:
        >>> sweep_weights([0.9, 0.5], 3)
        [[0.9, 0.04999999999999999, 0.04999999999999999], [0.5, 0.25, 0.25]]
    """
    return [[w] + [(1.0 - w) / (models - 1)] * (models - 1) for w in weights_a]


def merge_sweep(
    alignment: Alignment,
    models: Sequence[LoadedModel],
    weights: Sequence[Sequence[float]],
    *,
    inplace: bool = False,
) -> Iterator[MergeResult]:
    """Yield one :class:`MergeResult` per weight vector (A first), lazily: one merged copy of
    the model in memory at a time. With ``inplace`` the models' own tensors are permuted and
    the last combination overwrites A's (the earlier ones are copies)."""
    policy = alignment.policy
    if alignment.unmerges:  # zipped parts: each weight has its own merge matrices
        for k, w in enumerate(weights):
            last = inplace and k == len(weights) - 1
            yield merge_all(alignment, models, weights=list(w), inplace=last)
        return
    states, checks, timings = aligned_states(
        alignment, models, verify=policy.verify, inplace=inplace
    )
    n = len(models)
    rests = [untraced(m) for m in models] if models[0].partial else None
    for k, w in enumerate(weights):
        p = policy.with_weights(list(w))
        last = inplace and k == len(weights) - 1
        t = time.perf_counter()
        merged = combine(states, lambda key, p=p: p.weights_for(key, n), p.combine, inplace=last)
        rest = combine(rests, lambda key, p=p: p.weights_for(key, n), p.combine) if rests else {}
        times = {**timings, "interpolate_s": time.perf_counter() - t}
        yield MergeResult(alignment, merged, models[0], p.base_weights(n), checks, times, rest=rest)
