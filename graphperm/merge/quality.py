"""A quality figure every alignment method gets: how much model B's weights agree with model
A's before and after alignment (the cosine of the two models' weight matrices over every one the
alignment moves). Correlations of activations exist only for methods that measure them; this
needs nothing but the weights, so data-free and rotating methods report it too.

Example:
    >>> from graphperm.analysis import analyse
    >>> from graphperm.apply import Indexer, random_permutation
    >>> from graphperm.trace import load_model, trace
    >>> a = load_model("builtin:bert-tiny")
    >>> analysis = analyse(trace(a))
    >>> scramble = random_permutation(Indexer(analysis).shapes(), seed=1)
    >>> same = weight_agreement(analysis, scramble, a.state_dict(), a.state_dict())
    >>> same["before"], same["after"] < 0.5
    (1.0, True)
"""

from __future__ import annotations

import math

import torch

from graphperm.analysis import Analysis
from graphperm.apply import Indexer, Permutation

__all__ = ["weight_agreement"]


def weight_agreement(
    analysis: Analysis,
    perm: Permutation,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
) -> dict[str, float]:
    """``{"before": cos, "after": cos}``: the cosine of A's and B's weight matrices (linear,
    convolution, embedding: norm gains, all near 1, would hide everything), over every one
    ``perm`` moves, before and after ``perm`` is applied to B (1.0: identical weights)."""
    indexer = Indexer(analysis)
    coupling = analysis.coupling
    by_target = {target: key for key, target in coupling.state.items()}
    before = after = norm_a = norm_b = 0.0
    with torch.no_grad():
        for name, a in state_a.items():
            key, b = by_target.get(name), state_b.get(name)
            if key is None or b is None or not a.is_floating_point() or a.ndim < 2:
                continue
            moved = indexer.permute(b, coupling.classes(key), perm)
            if moved is b:
                continue
            a64 = a.double()
            before += float((a64 * b.double()).sum())
            after += float((a64 * moved.double()).sum())
            norm_a += float(a64.square().sum())
            norm_b += float(b.double().square().sum())
    scale = math.sqrt(norm_a * norm_b)
    if scale == 0.0:
        return {}
    return {"before": round(before / scale, 6), "after": round(after / scale, 6)}
