"""ZipIt!'s matching (Stoica et al., ICLR 2024; the paper code's ``match_tensors_zipit``): the
units of every model at one site are pooled, and the most correlated pair is merged, greedily,
until one model's width is left. Pairs inside one model are allowed up to a budget (``beta``
times the merges each model must make); a merged unit's correlations are the minimum of its
members' and are multiplied by ``alpha`` (the repeat-match decay) so that it is matched again
only when nothing better is left.

The result is, per site, a merge matrix ``M`` (merged units × pooled units: the mean of each
merged unit's members) and an unmerge matrix ``U`` (pooled units × merged units: which merged
unit each pooled unit became). Model ``m``'s slice of the pooled axis gives its own ``M_m`` and
``U_m``; unlike a permutation ``U_m M_m ≠ I``: ZipIt! is not an exact transform.

:func:`zip_plan` zips every part a plan marks ``transform: zip`` from the calibration
statistics (each model's units against every model's, its own included); blocks (attention
heads) keep the permutation the alignment method found, and the channels are zipped within each
matched block. Applying the matrices to weights (``Σ_m w_m · M_m θ_m U_m`` through the graph's
coupling) is :mod:`graphperm.apply.zip`.

Example:
    >>> import torch
    >>> corr = torch.tensor([[1.0, 0.1, 0.9, 0.0], [0.1, 1.0, 0.0, 0.8],
    ...                      [0.9, 0.0, 1.0, 0.2], [0.0, 0.8, 0.2, 1.0]])
    >>> merge, unmerge = zip_match(corr, models=2)
    >>> unmerge.tolist()  # A's unit 0 with B's unit 0, A's unit 1 with B's unit 1
    [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graphperm.analysis import Analysis
from graphperm.apply import Permutation
from graphperm.errors import PolicyError
from graphperm.policy import Plan
from graphperm.solve.solver import _Solver
from graphperm.stats import Statistics

__all__ = ["ZipResult", "zip_match", "zip_plan"]


class ZipResult(tuple):
    """``(merge, unmerge)`` with the merges counted: ``within`` (pairs from one model) per
    model, ``across`` (pairs from two models; a merged unit counts as its first member's
    model, as in the paper code), and the mean (decayed) correlation of the merged pairs."""

    within: list[int]
    across: int
    mean_corr: float


def zip_match(
    corr: torch.Tensor, models: int, *, alpha: float = 0.3, beta: float = 0.125
) -> ZipResult:
    """Merge and unmerge matrices from ``corr``, the correlation of the pooled units of
    ``models`` models (model 0's units first, each model the same number), reducing them to one
    model's width. ``alpha`` in (0, 1] decays a merged unit's correlations (0 or less: a merged
    unit is never matched again with either member's model); ``beta`` in [0, 1] is the share of
    each model's merges that may pair two of its own units."""
    if not 0.0 <= beta <= 1.0:
        raise PolicyError(f"zipit: beta must be in [0, 1], not {beta:g}")
    if alpha > 1.0:
        raise PolicyError(f"zipit: alpha must be at most 1, not {alpha:g}")
    total = corr.shape[0]
    if corr.shape != (total, total) or total % models:
        raise ValueError(f"a square correlation of {models} models' units, not {corr.shape}")
    width = total // models
    sims = torch.nan_to_num(corr.detach().float().clone(), nan=0.0)
    sims.fill_diagonal_(-torch.inf)
    keep = torch.eye(total)  # pooled units × merged units, columns merged as units are
    origin = torch.arange(total) // width  # model of each merged unit (its first member's)
    merges = total - width
    budget = torch.full((models,), int((merges // models) * beta + 1e-4), dtype=torch.long)
    within, across, matched = [0] * models, 0, []
    while keep.shape[1] > width:
        n = sims.shape[1]
        best = int(sims.reshape(-1).argmax())
        matched.append(float(sims.reshape(-1)[best]))
        i, j = sorted((best % n, best // n))  # merge unit j into unit i
        oi, oj = int(origin[i]), int(origin[j])
        keep[:, i] += keep[:, j]
        keep = _drop(keep, j, 1)
        sims[:, i] = torch.minimum(sims[:, i], sims[:, j])  # a merged unit: its members' min
        _decay(sims[:, i], alpha, width, oi, oj)
        sims = _drop(sims, j, 1)
        sims[i, :] = torch.minimum(sims[i, :], sims[j, :])
        _decay(sims[i, :], alpha, width, oi, oj)
        sims = _drop(sims, j, 0)
        origin = _drop(origin, j, 0)
        if oi == oj:
            within[oi] += 1
            budget[oi] -= 1
            if budget[oi] <= 0:  # this model's budget of merges within itself is spent
                mine = origin == oi
                sims[mine[:, None] & mine[None, :]] = -torch.inf
        else:
            across += 1
    merge = (keep / (keep.sum(dim=0, keepdim=True) + 1e-5)).T
    result = ZipResult((merge, keep))
    result.within, result.across = within, across
    result.mean_corr = sum(matched) / len(matched) if matched else 0.0
    return result


def _drop(x: torch.Tensor, index: int, dim: int) -> torch.Tensor:
    """``x`` without entry ``index`` along ``dim``."""
    return torch.cat(
        [x.narrow(dim, 0, index), x.narrow(dim, index + 1, x.shape[dim] - index - 1)], dim
    )


def _decay(line: torch.Tensor, alpha: float, width: int, oi: int, oj: int) -> None:
    """A merged unit's correlations, in place: times ``alpha``, or (``alpha <= 0``) closed
    to both members' models (the paper code indexes those blocks by original position)."""
    if alpha > 0:
        line *= alpha
        return
    line[oi * width : (oi + 1) * width] = -torch.inf
    line[oj * width : (oj + 1) * width] = -torch.inf


def zip_plan(
    analysis: Analysis,
    plan: Plan,
    stats: Statistics,
    perms: Sequence[Permutation],
    *,
    alpha: float = 0.3,
    beta: float = 0.125,
) -> tuple[list[dict[tuple[str, str], torch.Tensor]], list[dict]]:
    """Every model's unmerge matrices (A first; ``(group, part) -> U``, shape ``(n, n)`` or,
    inside blocks, ``(outer, n, n)`` per new outer index) for the plan's zipped parts, and a
    report per part: merges within each model and across models, mean matched correlation.

    ``perms`` are the other models' permutations (towards A) of the parts that are not zipped:
    a zipped part inside blocks pools A's block ``h`` with each model's block ``perm[h]``.
    ``stats`` must hold every pair of models, each model with itself included
    (``reference_pairs(n, every=True, within=True)``).
    """
    models = len(perms) + 1
    solvers = {
        (i, j): _Solver(analysis, stats, (i, j)) for i in range(models) for j in range(models)
    }
    table = analysis.coupling.table
    groups = {g.name: g for g in analysis.groups}
    unmerges: list[dict[tuple[str, str], torch.Tensor]] = [{} for _ in range(models)]
    reports = []
    for target in plan.targets:
        if target.transform != "zip":
            continue
        group = groups[target.group]
        parts = {p.name: p for p in group.parts}
        part = parts[target.part]
        cls = table.find(part.cls)
        if part.outer is None:
            sites = [s for s in target.sites if solvers[(0, 0)].factors(s) == [cls]]
            if not sites:
                continue
            pooled = _pooled(
                {ij: sum(sv.corr(s) for s in sites) / len(sites) for ij, sv in solvers.items()},
                models,
            )
            result = zip_match(pooled, models, alpha=alpha, beta=beta)
            n = part.size
            for m in range(models):
                unmerges[m][(group.name, part.name)] = result[1][m * n : (m + 1) * n].double()
            results = [result]
        else:
            outer = parts[part.outer]
            views = {}
            for ij, sv in solvers.items():
                vs = [v for s in target.sites if (v := sv.blocks(s, outer, part)) is not None]
                if vs:
                    views[ij] = sum(vs) / len(vs)
            if len(views) != len(solvers):
                continue
            heads = [torch.arange(outer.size)]
            for perm in perms:
                p = perm.get(group.name, outer.name)
                heads.append(torch.arange(outer.size) if p is None else p)
            d = part.size
            per_model: list[list[torch.Tensor]] = [[] for _ in range(models)]
            results = []
            for h in range(outer.size):
                at = [int(hs[h]) for hs in heads]  # each model's block at new index h
                blocks = {
                    (i, j): v[at[i] * d : (at[i] + 1) * d, at[j] * d : (at[j] + 1) * d]
                    for (i, j), v in views.items()
                }
                result = zip_match(_pooled(blocks, models), models, alpha=alpha, beta=beta)
                results.append(result)
                for m in range(models):
                    per_model[m].append(result[1][m * d : (m + 1) * d].double())
            for m in range(models):
                unmerges[m][(group.name, part.name)] = torch.stack(per_model[m])
        for sv in solvers.values():
            sv.forget()
        reports.append(
            {
                "group": group.name,
                "part": part.name,
                "within_model_merges": [sum(r.within[m] for r in results) for m in range(models)],
                "across_model_merges": sum(r.across for r in results),
                "mean_matched_corr": round(sum(r.mean_corr for r in results) / len(results), 6),
            }
        )
    return unmerges, reports


def _pooled(blocks: dict[tuple[int, int], torch.Tensor], models: int) -> torch.Tensor:
    """The correlation of every model's units with every model's, model 0's first."""
    return torch.cat(
        [torch.cat([blocks[(i, j)] for j in range(models)], dim=1) for i in range(models)], dim=0
    )
