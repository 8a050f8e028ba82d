"""Merge/unmerge pairs on weights: ZipIt!'s transforms (and any pair that is not an inverse).

A zipped part gives every model ``m`` (A included) an unmerge matrix ``U_m`` (the model's units ×
merged units: ``U_m[i, k] = 1`` when the model's unit ``i`` became merged unit ``k``) and, from
those and the models' weights ``w``, a merge matrix ``M_m`` (merged units × the model's units):
``M_m[k, i] = U_m[i, k] / Σ_j w_j·|members of k in model j|``, so that ``Σ_m w_m · M_m f_m`` is
the ``w``-weighted mean of each merged unit's members (ZipIt!'s plain mean at equal weights; a
permutation's ``M_m = U_mᵀ`` when every merged unit has one member per model).

On a state dict, every axis a zipped part lives on gets ``M_m`` when the tensor writes the units
(a weight's output rows, a bias, a norm's gain) and ``U_m`` when it reads them (the axis the op
rules tagged ``weight_in``: a linear or convolution weight's input channels), through the
:class:`~graphperm.apply.Indexer`'s coupling: no per-architecture rule. Per-block parts (channels
inside attention heads) hold one matrix per new outer index, as rotations do.

Example:
    >>> u = {("g", "channels"): torch.eye(3)}
    >>> m = merge_matrices([u, u], [0.5, 0.5])
    >>> torch.equal(m[0][("g", "channels")], torch.eye(3, dtype=torch.float64))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graphperm.analysis import Analysis
from graphperm.apply.apply import tie_followers  # which tied key leads
from graphperm.apply.indexer import Indexer
from graphperm.apply.permutation import Permutation

__all__ = ["input_axes", "merge_matrices", "own_merge", "zip_state"]

Key = tuple[str, str]


def merge_matrices(
    unmerges: Sequence[dict[Key, torch.Tensor]], weights: Sequence[float]
) -> list[dict[Key, torch.Tensor]]:
    """Every model's merge matrices ``M_m`` (see the module) from all models' unmerge matrices
    and weights; a merged unit no model with weight > 0 contributes to gets the plain mean."""
    out: list[dict[Key, torch.Tensor]] = [{} for _ in unmerges]
    for key in unmerges[0]:
        us = [u[key].double() for u in unmerges]
        counts = [u.sum(-2, keepdim=True) for u in us]  # members per merged unit, per model
        total = sum(w * c for w, c in zip(weights, counts))
        plain = sum(counts)
        for m, (u, w) in enumerate(zip(us, weights)):
            denom = torch.where(total > 1e-12, total, plain * w if w > 0 else plain)
            out[m][key] = (u / denom.clamp_min(1e-12)).transpose(-1, -2)
    return out


def own_merge(unmerge: dict[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """One model's merge matrices on its own: each merged unit the mean of this model's members
    (zero rows where it has none). With :func:`zip_state` this is the model merged and then
    unmerged: only its own merges within itself change what it computes."""
    out = {}
    for key, u in unmerge.items():
        u = u.double()
        count = u.sum(-2, keepdim=True)
        out[key] = (u / count.clamp_min(1.0)).transpose(-1, -2)
    return out


def input_axes(analysis: Analysis) -> set[tuple[str, int]]:
    """``(state key, dim)`` of every saved tensor's axis that reads units (tagged
    ``weight_in`` by the op rules): the axes an unmerge matrix acts on."""
    coupling = analysis.coupling
    return {
        (coupling.state[key], dim)
        for (key, dim, virtual), tags in coupling.axis_tags.items()
        if "weight_in" in tags and not virtual and key in coupling.state
    }


def zip_state(
    indexer: Indexer,
    state: dict[str, torch.Tensor],
    merge: dict[Key, torch.Tensor],
    unmerge: dict[Key, torch.Tensor],
    *,
    inputs: set[tuple[str, int]] | None = None,
    inplace: bool = False,
) -> dict[str, torch.Tensor]:
    """``state`` (already permuted on its other parts) with the zipped parts' merge matrices on
    the axes that write their units and the unmerge matrices on those that read them.

    Example:
        >>> from graphperm.trace import load_model, trace
        >>> from graphperm.analysis import analyse
        >>> loaded = load_model("builtin:bert-tiny")
        >>> ix = Indexer(analyse(trace(loaded)))
        >>> group = next(g for g in ix.analysis.groups if g.kind == "ffn")
        >>> eye = {(group.name, "channels"): torch.eye(group.size)}
        >>> state = loaded.state_dict()
        >>> same = zip_state(ix, state, eye, eye)
        >>> all(torch.equal(same[k], state[k]) for k in state)
        True
    """
    if inputs is None:
        inputs = input_axes(indexer.analysis)
    writes = Permutation({g: {} for g, _ in merge})
    reads = Permutation({g: {} for g, _ in unmerge})
    for (g, p), m in merge.items():
        writes.set(g, p, m.double().transpose(-1, -2))  # new[k] = Σ_i M[k, i] old[i]
    for (g, p), u in unmerge.items():
        reads.set(g, p, u.double())  # new[k] = Σ_i old[i] U[i, k]
    coupling = indexer.analysis.coupling
    by_target = {target: key for key, target in coupling.state.items()}
    follows = tie_followers(state, set(by_target) - set(coupling.unused))
    out = {}
    with torch.no_grad():
        for name, tensor in state.items():
            key = by_target.get(name)
            if key is None or name in follows:
                out[name] = tensor
                continue
            classes = coupling.classes(key)
            moved = tensor
            for d in range(tensor.ndim):
                moved = indexer.mix(moved, classes, reads if (name, d) in inputs else writes, d)
            if inplace and moved is not tensor:
                tensor.copy_(moved)
                moved = tensor
            out[name] = moved
    for name, leader in follows.items():
        out[name] = state[name] if inplace else out[leader]
    return out
