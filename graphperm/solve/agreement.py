"""How much two permutations of the same groups agree (split-half stability, fast vs exact).

The agreement of a group is the fraction of its units that both permutations send to the same
place, counted on the flat channel axes where the group is measured (so a head matched
differently counts all its channels as disagreeing). With rotations it is ``tr(T₁ᵀ T₂) / n`` for
the two transforms' matrices on those axes, which is the same fraction for permutations.

Example:
    >>> agreement(plan, analysis, perm_half_1, perm_half_2)   # doctest: +SKIP
    {'encoder.layers.0.feed_forward': 0.998, ...}
"""

from __future__ import annotations

import torch

from graphperm.analysis import Analysis
from graphperm.apply import Indexer, Permutation
from graphperm.policy import Plan

__all__ = ["agreement"]


def agreement(plan: Plan, analysis: Analysis, p: Permutation, q: Permutation) -> dict[str, float]:
    """Per aligned group, the fraction of units ``p`` and ``q`` place identically."""
    indexer = Indexer(analysis)
    rotated = bool(p.rotated or q.rotated)
    out: dict[str, float] = {}
    for group, targets in plan.by_group().items():
        sites = {(s.key, s.dim) for t in targets.values() for s in t.sites}
        same, total = 0.0, 0
        for key, dim in sorted(sites):
            cls = analysis.coupling.cls(key, dim)
            if rotated:
                same += float((indexer.matrix(cls, p) * indexer.matrix(cls, q)).sum())
                total += analysis.coupling.tensors[key].shape[dim]
                continue
            idx = torch.arange(analysis.coupling.tensors[key].shape[dim])
            a = indexer.permute(idx, [cls], p)
            b = indexer.permute(idx, [cls], q)
            same += int((a == b).sum())
            total += idx.numel()
        out[group] = same / total if total else 1.0
    return out
