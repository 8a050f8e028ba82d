"""Consensus refinement for three or more models (git re-basin's MergeMany, C2M3-style).

After every model has been aligned into A's basis (each against A), a few rounds re-align each
model ``i = 1 .. M-1`` to the weighted average of all the *others* (A included), in turn, with the
others' current permutations. **A stays fixed**: the objective below does not change when every
model is permuted the same way, so fixing A loses nothing, and A's basis stays the output basis
with no re-expression at the end.

**Activations** (methods that read correlations) — only the statistics of the one calibration
pass, collected for every pair (``calibrate(..., every_pair=True)``). Let ``u_j`` be model
``j``'s standardised units (centred, unit variance; dead units 0), ``p_j`` its current
permutation (``p_A`` the identity) and ``w̃_j`` the merge weights of the others, normalised to
sum to 1. The average of the others, unit ``a`` of A's basis, is ``z_a = Σ_{j≠i} w̃_j
u_j[p_j[a]]``; with ``ρ_jk`` the Pearson correlation between models ``j`` and ``k``
(:meth:`graphperm.stats.SiteStats.correlation`, from the pair's cross products and both
models' sums and squares)::

    cov(z_a, u_i[b]) = K_i[a, b] = Σ_{j≠i} w̃_j ρ_ji[p_j[a], b]
    var(z_a)         = Σ_{j≠i} Σ_{k≠i} w̃_j w̃_k d_jk[a],  d_jk[a] = ρ_jk[p_j[a], p_k[a]]
                       (d_jj[a] = 1 for a live unit, 0 for a dead one)
    corr(z_a, x_i[b]) = K_i[a, b] / sqrt(var(z_a))

Model ``i`` is re-aligned by the policy's method on ``K_i`` in place of its correlation with A
(heads first, then channels, as usual). ``K_i`` drops the per-row factor ``1/sd(z_a)``: its
assignment maximises exactly the terms of the consensus objective that involve model ``i``::

    F = Σ_{j<k} w_j w_k · mean over sites · mean_a d_jk[a]  /  Σ_{j<k} w_j w_k

(the weighted mean matched correlation over every pair), so every step is a coordinate ascent
on ``F``. A group's new permutation is kept only where it raises its terms of ``F`` (the
hierarchical head solve and the weight tie-break are not exact maximisers), so ``F`` never
decreases from round to round, and the rounds stop once one changes nothing.

**Weights** (``method: weights``): git re-basin's MergeMany proper — model ``i`` is weight-matched
to the weighted mean of the others' permuted weights; ``F`` is the weighted mean cosine
similarity of every pair's permuted weights, from one Gram matrix of inner products streamed
tensor by tensor.

Example:
    >>> import torch
    >>> from graphperm.stats import SiteStats
    >>> x = torch.randn(500, 4, dtype=torch.float64)
    >>> s = SiteStats.empty(4, torch.float64, models=3, pairs=[(0, 1), (0, 2), (1, 2)])
    >>> s.update(x, x[:, [1, 0, 3, 2]], x[:, [3, 2, 1, 0]])
    >>> same = [torch.arange(4)] * 3                # every model's units left where they are
    >>> c = correlation_with_others(s, same, model=1, weights=[0.5, 0.25, 0.25])
    >>> c.argmax(dim=1).tolist()                    # model 1's unit that tracks the others' a
    [1, 0, 3, 2]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from graphperm.analysis import Analysis
from graphperm.apply import Indexer, Permutation, permute_state
from graphperm.errors import PolicyError
from graphperm.policy import Plan
from graphperm.solve.methods import Problem, get_method
from graphperm.stats import SiteStats, Statistics

__all__ = [
    "ConsensusRound",
    "ConsensusView",
    "compose",
    "consensus_cost",
    "correlation_with_a",
    "correlation_with_others",
    "matched_correlations",
    "others_weights",
    "refine",
    "site_indices",
]

log = logging.getLogger(__name__)

SiteKey = tuple[str, int]


def others_weights(weights: Sequence[float], model: int) -> list[float]:
    """The merge weights of every model but ``model``, normalised to sum to 1 (0 at ``model``;
    equal shares when the others weigh nothing).

    Example:
        >>> others_weights([0.5, 0.25, 0.25], 1)
        [0.6666666666666666, 0.0, 0.3333333333333333]
    """
    rest = sum(w for j, w in enumerate(weights) if j != model)
    n = len(weights) - 1
    return [
        0.0 if j == model else (w / rest if rest > 0 else 1.0 / n) for j, w in enumerate(weights)
    ]


def _corr(site: SiteStats, j: int, k: int) -> torch.Tensor:
    return site.correlation((j, k))


def consensus_cost(
    site: SiteStats, indices: Sequence[torch.Tensor], model: int, weights: Sequence[float]
) -> torch.Tensor:
    """``K[a, b] = Σ_{j≠model} w̃_j ρ_{j,model}[indices[j][a], b]`` (float64, (C, C)): the
    covariance of the others' weighted average of standardised units (unit ``a`` of A's basis;
    ``indices[j][a]`` is model ``j``'s unit there) with ``model``'s standardised unit ``b``."""
    w = others_weights(weights, model)
    total: torch.Tensor | None = None
    for j, wj in enumerate(w):
        if j == model or wj == 0.0:
            continue
        term = _corr(site, j, model)[indices[j]].mul_(wj)
        total = term if total is None else total.add_(term)
    if total is None:
        return torch.zeros(site.channels, site.channels, dtype=torch.float64)
    return total


def matched_correlations(
    site: SiteStats, indices: Sequence[torch.Tensor]
) -> dict[tuple[int, int], torch.Tensor]:
    """``d[(j, k)][a] = ρ_jk[indices[j][a], indices[k][a]]`` for every pair ``j < k``: how well
    the models' units at position ``a`` of A's basis correlate."""
    m = len(indices)
    return {
        (j, k): _corr(site, j, k)[indices[j], indices[k]] for j in range(m) for k in range(j + 1, m)
    }


def _variance_of_average(
    site: SiteStats,
    indices: Sequence[torch.Tensor],
    d: dict[tuple[int, int], torch.Tensor],
    w: Sequence[float],
) -> torch.Tensor:
    """``var(z_a)`` of the weighted average ``z`` (weights ``w``) of standardised units."""
    var = torch.zeros(site.channels, dtype=torch.float64)
    for j, wj in enumerate(w):
        if wj == 0.0:
            continue
        var += wj * wj * site.live(j)[indices[j]].double()
        for k in range(j + 1, len(w)):
            if w[k] != 0.0:
                var += 2 * wj * w[k] * d[(j, k)]
    return var


def correlation_with_others(
    site: SiteStats, indices: Sequence[torch.Tensor], model: int, weights: Sequence[float]
) -> torch.Tensor:
    """Pearson correlation (float64, (C, C)) of the weighted average of the other models'
    standardised units, aligned (row ``a``: A's basis, model ``j``'s unit ``indices[j][a]``),
    with model ``model``'s unit ``b`` (column), from the statistics alone. Rows where the
    average is constant are 0."""
    w = others_weights(weights, model)
    cov = consensus_cost(site, indices, model, weights)
    var = _variance_of_average(site, indices, matched_correlations(site, indices), w)
    sd = var.clamp_min(0).sqrt()
    ok = sd > 1e-12
    return torch.where(ok[:, None], cov / sd.clamp_min(1e-12)[:, None], torch.zeros_like(cov))


class ConsensusView:
    """Statistics-like: :meth:`correlation` is :func:`consensus_cost` of model ``model``, so any
    correlation-based :class:`~graphperm.solve.AlignmentMethod` re-aligns it to the average
    of the others (as pair ``(0, 1)``: the average in A's basis against the model)."""

    def __init__(
        self,
        stats: Statistics,
        indexer: Indexer,
        perms: Sequence[Permutation],
        model: int,
        weights: Sequence[float],
    ) -> None:
        self.stats, self.indexer, self.model, self.weights = stats, indexer, model, list(weights)
        self.perms = [Permutation(), *perms]  # model j's permutation; A's is the identity

    def indices(self, key: SiteKey) -> list[torch.Tensor]:
        """Per model, its unit at each position of A's basis at site ``key``."""
        return site_indices(self.indexer, key, self.perms)

    def correlation(self, key: SiteKey, pair: tuple[int, int] = (0, 1)) -> torch.Tensor:
        if pair != (0, 1):
            raise KeyError(f"a consensus view has one pair, (0, 1), not {pair}")
        return consensus_cost(self.stats.site(key), self.indices(key), self.model, self.weights)


def site_indices(
    indexer: Indexer, key: SiteKey, perms: Sequence[Permutation]
) -> list[torch.Tensor]:
    """``[model j's unit at each position of A's basis]`` at site ``key`` under ``perms``
    (one per model, A's first)."""
    value, dim = key
    coupling = indexer.analysis.coupling
    idx = torch.arange(coupling.tensors[value].shape[dim])
    cls = coupling.cls(value, dim)
    return [indexer.permute(idx, [cls], p) for p in perms]


def correlation_with_a(
    analysis: Analysis, plan: Plan, stats: Statistics, perm: Permutation, group: str, model: int
) -> float | None:
    """Mean matched correlation of model ``model`` (under ``perm``) with A on ``group``'s
    sites, as :class:`~graphperm.solve.GroupReport`'s ``corr_after`` measures it (None: the
    plan measures no site of the group)."""
    indexer = Indexer(analysis)
    vals = []
    for key in _group_sites(plan).get(group, []):
        idx = site_indices(indexer, key, [Permutation(), perm])[1]
        c = stats.site(key).correlation((0, model))
        vals.append(float(c[torch.arange(c.shape[0]), idx].mean()))
    return sum(vals) / len(vals) if vals else None


@dataclass
class ConsensusRound:
    """The consensus after a round (round 0: each model aligned against A only).

    ``objective``: the weighted mean matched correlation over every pair of models (weights:
    the weighted mean cosine similarity of their permuted weights); ``with_others[i]``: model
    ``i``'s mean matched correlation (cosine) with the average of the others; ``changed``:
    the models whose permutation this round changed."""

    round: int
    objective: float
    with_others: list[float]
    changed: list[int] = field(default_factory=list)
    measure: str = "correlation"

    def to_dict(self) -> dict:
        return {
            "round": self.round,
            "measure": self.measure,
            "objective": round(self.objective, 6),
            "with_others": [round(v, 6) for v in self.with_others],
            "changed": self.changed,
        }


def _group_sites(plan: Plan) -> dict[str, list[SiteKey]]:
    out: dict[str, list[SiteKey]] = {}
    for gname, targets in plan.by_group().items():
        out[gname] = sorted({(s.key, s.dim) for t in targets.values() for s in t.sites})
    return out


class _Correlations:
    """The activation side: scores per group from the every-pair statistics."""

    def __init__(self, stats: Statistics, indexer: Indexer, plan: Plan, weights: list[float]):
        self.stats, self.indexer, self.weights = stats, indexer, weights
        self.groups = {g: s for g, s in _group_sites(plan).items() if s}
        pairs = set(stats.site(next(iter(stats.site_keys()))).pairs) if stats.site_keys() else set()
        m = len(weights)
        missing = [(j, k) for j in range(m) for k in range(j + 1, m) if (j, k) not in pairs]
        if missing:
            raise PolicyError(
                "consensus_rounds needs the statistics of every pair of models (collected "
                f"when consensus_rounds > 0); these have none for {missing}"
            )

    def model_score(self, group: str, perms: list[Permutation], model: int) -> float:
        """Σ_j w̃_j mean_s mean_a d_{j,model}: the terms of F (over w_model) that move with
        ``model``'s permutation, on ``group``'s sites."""
        total = 0.0
        sites = self.groups[group]
        for key in sites:
            site = self.stats.site(key)
            idx = site_indices(self.indexer, key, perms)
            cost = consensus_cost(site, idx, model, self.weights)
            total += float(cost[torch.arange(cost.shape[0]), idx[model]].mean())
        return total / len(sites)

    def measure(self, perms: list[Permutation]) -> tuple[float, list[float]]:
        """``(F, [each model's mean matched correlation with the average of the others])``,
        means over sites, then over groups."""
        m = len(self.weights)
        obj, with_others = [], [[] for _ in range(m)]
        for sites in self.groups.values():
            f_g, w_g = [], [[] for _ in range(m)]
            for key in sites:
                site = self.stats.site(key)
                idx = site_indices(self.indexer, key, perms)
                d = matched_correlations(site, idx)
                num = sum(
                    self.weights[j] * self.weights[k] * float(v.mean()) for (j, k), v in d.items()
                )
                den = sum(self.weights[j] * self.weights[k] for j, k in d)
                f_g.append(num / den if den > 0 else 0.0)
                for i in range(m):
                    w = others_weights(self.weights, i)
                    cov = sum(w[j] * d[(min(i, j), max(i, j))] for j in range(m) if j != i)
                    sd = _variance_of_average(site, idx, d, w).clamp_min(0).sqrt()
                    r = torch.where(sd > 1e-12, cov / sd.clamp_min(1e-12), torch.zeros_like(sd))
                    w_g[i].append(float(r.mean()))
            obj.append(sum(f_g) / len(f_g))
            for i in range(m):
                with_others[i].append(sum(w_g[i]) / len(w_g[i]))
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        return mean(obj), [mean(x) for x in with_others]


class _Weights:
    """The weights side: one Gram matrix of the models' permuted weights."""

    def __init__(self, indexer: Indexer, states: list[dict], weights: list[float]) -> None:
        self.indexer, self.states, self.weights = indexer, states, weights

    def gram(self, perms: list[Permutation], extra: tuple[int, Permutation] | None = None):
        """Inner products of every model's permuted floating-point weights (and of model
        ``extra[0]`` under ``extra[1]`` as one more row), streamed tensor by tensor."""
        jobs = [(self.states[j], p) for j, p in enumerate(perms)]
        if extra is not None:
            jobs.append((self.states[extra[0]], extra[1]))
        g = torch.zeros(len(jobs), len(jobs), dtype=torch.float64)
        for name, t in self.states[0].items():
            if not t.is_floating_point():
                continue
            flat = torch.stack(
                [
                    permute_state(self.indexer, {name: s[name]}, p)[name].reshape(-1).double()
                    for s, p in jobs
                ]
            )
            g += flat @ flat.T
        return g

    def with_others(self, g: torch.Tensor, i: int, row: int | None = None) -> float:
        """Cosine of model ``i`` (Gram row ``row``, default ``i``) with the others' mean."""
        row = i if row is None else row
        w = torch.tensor(others_weights(self.weights, i), dtype=torch.float64)
        m = len(self.weights)
        num = float(w @ g[row, :m])
        den = math.sqrt(max(float(g[row, row]), 1e-300) * max(float(w @ g[:m, :m] @ w), 1e-300))
        return num / den

    def model_terms(self, g: torch.Tensor, i: int, row: int | None = None) -> float:
        """``Σ_{j≠i} w_j cos(i, j)`` with model ``i`` as Gram row ``row`` (default ``i``): the
        terms of the objective (over ``w_i``) that move with model ``i``'s permutation."""
        row = i if row is None else row
        norm = math.sqrt(max(float(g[row, row]), 1e-300))
        return sum(
            self.weights[j] * float(g[row, j]) / (norm * math.sqrt(max(float(g[j, j]), 1e-300)))
            for j in range(len(self.weights))
            if j != i
        )

    def measure(self, perms: list[Permutation]) -> tuple[float, list[float]]:
        g = self.gram(perms)
        m = len(self.weights)
        num = den = 0.0
        for j in range(m):
            for k in range(j + 1, m):
                wjk = self.weights[j] * self.weights[k]
                cos = float(g[j, k]) / math.sqrt(max(float(g[j, j] * g[k, k]), 1e-300))
                num, den = num + wjk * cos, den + wjk
        return (num / den if den > 0 else 0.0), [self.with_others(g, i) for i in range(m)]

    def target(self, perms: list[Permutation], i: int) -> dict[str, torch.Tensor]:
        """The weighted mean of the others' permuted weights (A's basis)."""
        w = others_weights(self.weights, i)
        out: dict[str, torch.Tensor] = {}
        for name, t in self.states[0].items():
            if not t.is_floating_point():
                out[name] = t
                continue
            acc = torch.zeros_like(t, dtype=torch.float32)
            for j, wj in enumerate(w):
                if wj:
                    s = permute_state(self.indexer, {name: self.states[j][name]}, perms[j])
                    acc += wj * s[name].float()
            out[name] = acc.to(t.dtype)
        return out


def refine(
    analysis: Analysis,
    plan: Plan,
    perms: Sequence[Permutation],
    *,
    stats: Statistics | None,
    states: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float],
    rounds: int,
) -> tuple[list[Permutation], list[ConsensusRound]]:
    """Up to ``rounds`` rounds of consensus refinement of ``perms`` (model ``k + 1``'s
    permutation into A's basis is ``perms[k]``), with the plan's alignment method and the
    merge ``weights`` (A first). Returns the refined permutations and one record per round,
    round 0 being the start; stops early once a round changes nothing.

    Example:
        >>> perms, history = refine(analysis, plan, perms, stats=stats, states=states,
        ...                         weights=[1/3, 1/3, 1/3], rounds=3)   # doctest: +SKIP
        >>> [r.objective for r in history]                              # doctest: +SKIP
        [0.41, 0.47, 0.47]
    """
    method = get_method(plan.policy.method)
    weights = list(weights)
    m = len(weights)
    if len(perms) != m - 1:
        raise ValueError(f"{len(perms)} permutations for {m} models")
    indexer = Indexer(analysis)
    by_corr = "correlation" in method.needs
    if by_corr and stats is None:
        raise PolicyError(f"method '{method.name}' needs calibration data; pass --calib PATH")
    if "weights" in method.needs and len(states) < m:
        raise PolicyError("consensus weight matching needs every model's weights")
    corr = _Correlations(stats, indexer, plan, weights) if by_corr else None
    wts = _Weights(indexer, list(states), weights) if len(states) >= m else None
    scorer = corr if corr is not None else wts
    if scorer is None:
        raise PolicyError("consensus refinement needs statistics or the models' weights")
    current = [Permutation(), *(_copy(p) for p in perms)]
    measure = "correlation" if corr is not None else "weights_cosine"
    history = [ConsensusRound(0, *scorer.measure(current), measure=measure)]
    log.info("consensus round 0: objective %.4f", history[0].objective)
    for r in range(1, rounds + 1):
        changed = []
        for i in range(1, m):
            target = (
                wts.target(current, i)
                if "weights" in method.needs and wts is not None
                else (states[0] if states else None)
            )
            if by_corr:
                problem = Problem(
                    analysis,
                    plan,
                    1,
                    ConsensusView(stats, indexer, current[1:], i, weights),
                    [target, states[i]] if target is not None and len(states) > i else [],
                )
                new = method.align(problem, reports=False).perm
            else:  # weight matching is a local search: start it where model i stands
                here = permute_state(indexer, states[i], current[i])
                step = method.align(Problem(analysis, plan, 1, None, [target, here]), reports=False)
                new = compose(analysis, current[i], step.perm)
                del here
            kept = _keep_better(corr, wts, current, i, new)
            if not _same(kept, current[i]):
                changed.append(i)
            current[i] = kept
        history.append(ConsensusRound(r, *scorer.measure(current), changed, measure))
        log.info(
            "consensus round %d: objective %.4f, models changed %s",
            r,
            history[-1].objective,
            changed,
        )
        if not changed:
            break
    return current[1:], history


def _keep_better(
    corr: _Correlations | None,
    wts: _Weights | None,
    current: list[Permutation],
    i: int,
    new: Permutation,
) -> Permutation:
    """``new`` where it raises model ``i``'s terms of the objective, else the old one:
    per group on correlations, for the whole model on weights."""
    old = current[i]
    if corr is not None:
        out = Permutation()
        for group in corr.groups:
            trial = [*current[:i], new, *current[i + 1 :]]
            better = _gain(corr.model_score(group, trial, i), corr.model_score(group, current, i))
            src = new if better else old
            for part, t in src.perms.get(group, {}).items():
                out.set(group, part, t)
        for group, parts in old.perms.items():  # groups the plan does not measure: as they were
            if group not in corr.groups:
                for part, t in parts.items():
                    out.set(group, part, t)
        return out
    assert wts is not None
    g = wts.gram(current, (i, new))
    return new if _gain(wts.model_terms(g, i, row=len(current)), wts.model_terms(g, i)) else old


def _gain(new: float, old: float) -> bool:
    """``new`` beats ``old`` by more than rounding (ties keep the old permutation, so a round
    that improves nothing changes nothing and the refinement stops)."""
    return new > old + 1e-9 * max(1.0, abs(old))


def compose(analysis: Analysis, first: Permutation, then: Permutation) -> Permutation:
    """The permutation that does what applying ``first``, then ``then``, does: per part
    ``first[then]``; for a part inside blocks (one row per new block index),
    row ``a`` is ``first[ρ[a]][then[a]]`` with ``ρ`` the outer part's ``then``.

    Example:
        >>> once = permute_state(ix, s, compose(analysis, p, q))  # doctest: +SKIP
        >>> twice = permute_state(ix, permute_state(ix, s, p), q)  # doctest: +SKIP
    """
    out = Permutation()
    for g in analysis.groups:
        sizes = {p.name: p.size for p in g.parts}
        for p in g.parts:
            a, b = first.get(g.name, p.name), then.get(g.name, p.name)
            if a is None and b is None:
                continue
            if p.outer is None:
                a = torch.arange(p.size) if a is None else a
                out.set(g.name, p.name, a[torch.arange(p.size) if b is None else b])
                continue
            h = sizes[p.outer]
            rows = torch.arange(p.size).expand(h, p.size)
            a = rows if a is None else a
            b = rows if b is None else b
            rho = then.get(g.name, p.outer)
            rho = torch.arange(h) if rho is None else rho
            out.set(g.name, p.name, a[rho].gather(1, b))
    return out


def _copy(p: Permutation) -> Permutation:
    return Permutation({g: dict(parts) for g, parts in p.perms.items()})


def _same(p: Permutation, q: Permutation) -> bool:
    keys = {(g, n) for g, n, _ in p} | {(g, n) for g, n, _ in q}
    for g, n in keys:
        a, b = p.get(g, n), q.get(g, n)
        if a is None or b is None:
            if not _identity(a if a is not None else b):
                return False
        elif not torch.equal(a, b):
            return False
    return True


def _identity(t: torch.Tensor) -> bool:
    return bool(torch.equal(t, torch.arange(t.shape[-1]).expand_as(t)))
