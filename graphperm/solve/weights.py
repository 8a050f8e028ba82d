"""Data-free alignment: git re-basin's weight matching over the compiler's own groups.

Each *coordinate* of the descent is one part of a group on its own (conv channels, FFN hidden
units), or an outer part with the parts that live inside its blocks (attention heads with their
``qk``/``vo`` channels, the residual stream's blocks with their channels). Its cost between A's
unit ``i`` and B's unit ``j`` is the sum, over every tensor axis the group moves, of the inner
product of A's slice for ``i`` with B′'s slice for ``j``, where B′ is B with every *other*
coordinate's current permutation applied (through the :class:`~graphperm.apply.Indexer`, so any
axis structure the analysis proved is honoured). One linear assignment per coordinate (blocks:
whole blocks first on block scores, then the channels inside each matched pair); coordinates are
visited in random order, round after round, until no coordinate improves its cost. A part the
plan rotates (``transform: orth``) gets an orthogonal Procrustes solve on the same cost instead
of an assignment (blocks are then scored by the best rotation's value, the nuclear norm), on
weights whose norms have been folded into their readers.

``hybrid`` adds the activations method's correlations to the (normalised) weight cost.

Example:
    >>> from graphperm.solve import get_method
    >>> sorted(get_method("weights").needs), sorted(get_method("hybrid").needs)
    (['weights'], ['correlation', 'weights'])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from graphperm.analysis import Analysis, Part, PermutationGroup
from graphperm.analysis.classes import Concat, Product
from graphperm.apply import Indexer, Permutation, fold_state, folds_for
from graphperm.errors import PolicyError
from graphperm.solve.assignment import (
    block_scores,
    match,
    procrustes,
    rotation_block_scores,
    rotation_score,
)
from graphperm.solve.methods import AlignmentMethod, Problem, Solution, register_method
from graphperm.solve.solver import GroupReport

__all__ = ["HybridMatching", "WeightMatching", "weight_matching"]

log = logging.getLogger(__name__)

MAX_ROUNDS = 50
HYBRID_ALPHA = 1.0  # weight of the normalised weight cost against the mean site correlation


@dataclass
class _Slice:
    """Axis ``dim`` of state tensor ``name`` (graph value ``key``), rows ``lo:hi`` of it, whose
    channels are exactly the coordinate's ``factors`` (outer first)."""

    name: str
    key: str
    dim: int
    lo: int
    hi: int
    others: frozenset[int]  # leaf classes on the tensor's other axes


@dataclass
class _Coordinate:
    """One step of the descent: a flat part, or an outer part and its inner parts."""

    group: PermutationGroup
    outer: Part | None  # blocks: the outer part (heads, blocks); None for a flat part
    parts: list[Part]  # flat: [the part]; blocks: the inner parts (targeted or not)
    targets: set[str]  # the part names the plan aligns
    slices: dict[str, list[_Slice]] = field(default_factory=dict)  # by inner part name (or "")

    @property
    def name(self) -> str:
        return f"{self.group.name}/{'+'.join(sorted(self.targets))}"

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.parts} | ({self.outer.name} if self.outer else set())


class _WeightCosts:
    """Cost matrices of every coordinate from the two models' weights."""

    def __init__(self, analysis: Analysis, a: dict, b: dict) -> None:
        self.analysis = analysis
        self.table = analysis.coupling.table
        self.coupling = analysis.coupling
        self.indexer = Indexer(analysis)
        self.a, self.b = a, b
        self.by_target = {t: k for k, t in self.coupling.state.items()}

    def leaves(self, c: int) -> set[int]:
        c = self.table.find(c)
        d = self.table.decomp(c)
        if d is None:
            return {c}
        items = d.factors if isinstance(d, Product) else d.segments
        return set().union(*(self.leaves(x) for x in items))

    def find_slices(self, coord: _Coordinate, factors: list[int]) -> list[_Slice]:
        """Every tensor axis (or concatenated segment of one) whose channels are ``factors``;
        tensors that hold the coordinate on another axis too are left out (their cost would
        need the coordinate's own permutation on that axis)."""
        mine = {self.table.find(p.cls) for p in coord.parts}
        if coord.outer is not None:
            mine.add(self.table.find(coord.outer.cls))
        out = []
        for name, dim in coord.group.tensors:
            key = self.by_target.get(name)
            if key is None or name not in self.a:
                continue
            classes = self.coupling.classes(key)
            others = set().union(*(self.leaves(c) for d, c in enumerate(classes) if d != dim))
            if others & mine:
                continue
            for lo, hi, c in self._segments(classes[dim]):
                if self.table.factors(c) == factors:
                    out.append(_Slice(name, key, dim, lo, hi, frozenset(others)))
        return out

    def _segments(self, c: int, offset: int = 0) -> list[tuple[int, int, int]]:
        c = self.table.find(c)
        out = [(offset, offset + self.table.size(c), c)]
        d = self.table.decomp(c)
        if isinstance(d, Concat):
            for s in d.segments:
                out += self._segments(s, offset)
                offset += self.table.size(s)
        return out

    def cost(self, slices: list[_Slice], perm: Permutation, n: int) -> torch.Tensor | None:
        """``C[i, j] = Σ ⟨A's slice i, B′'s slice j⟩`` over ``slices`` (None if there are none),
        B′ = B under ``perm`` (which must not hold the coordinate's own parts)."""
        if not slices:
            return None
        total = torch.zeros(n, n)
        for s in slices:
            classes = self.coupling.classes(s.key)
            wa = self.a[s.name].detach()
            wb = self.indexer.permute(self.b[s.name].detach(), classes, perm)
            xa = wa.movedim(s.dim, 0)[s.lo : s.hi].reshape(n, -1).float()
            xb = wb.movedim(s.dim, 0)[s.lo : s.hi].reshape(n, -1).float()
            total.addmm_(xa, xb.T)
        return total.double()

    def norms(self, slices: list[_Slice], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared norms of A's and B's slices per unit (to normalise for ``hybrid``)."""
        na, nb = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for s in slices:
            for w, acc in ((self.a[s.name], na), (self.b[s.name], nb)):
                x = w.detach().movedim(s.dim, 0)[s.lo : s.hi].reshape(n, -1).double()
                acc += (x * x).sum(1)
        return na, nb


def _coordinates(analysis: Analysis, wanted: dict[str, set[str]]) -> list[_Coordinate]:
    out = []
    for g in analysis.groups:
        targets = wanted.get(g.name)
        if not targets:
            continue
        inners: dict[str, list[Part]] = {}
        for p in g.parts:
            if p.outer:
                inners.setdefault(p.outer, []).append(p)
        done: set[str] = set()
        for outer_name, inner_parts in inners.items():
            names = {outer_name, *(p.name for p in inner_parts)}
            done |= names
            if names & targets:
                outer = g.part(outer_name)
                out.append(_Coordinate(g, outer, inner_parts, names & targets))
        for p in g.parts:
            if p.name in targets and p.name not in done:
                out.append(_Coordinate(g, None, [p], {p.name}))
    return out


def _without(perm: Permutation, coord: _Coordinate) -> Permutation:
    """``perm`` with the coordinate's own parts left at identity."""
    out = Permutation({g: dict(parts) for g, parts in perm.perms.items()})
    for name in coord.names:
        out.perms.get(coord.group.name, {}).pop(name, None)
    return out


class _Descent:
    """Coordinate descent on the weight cost (plus fixed extra costs, for ``hybrid``)."""

    def __init__(
        self,
        problem: Problem,
        *,
        extra: dict[tuple[str, str], torch.Tensor] | None = None,
        alpha: float = 1.0,
        seed: int = 0,
    ) -> None:
        if len(problem.states) <= problem.model:
            raise PolicyError("weight matching needs the models' weights (Problem.states)")
        self.analysis = analysis = problem.analysis
        self.rotated = set(problem.plan.rotated)
        a, b = problem.states[0], problem.states[problem.model]
        folds = folds_for(analysis, self.rotated)
        if folds:  # rotations pass through norms only once their gains are folded
            a, b = fold_state(a, folds), fold_state(b, folds)
        self.costs = _WeightCosts(analysis, a, b)
        wanted: dict[str, set[str]] = {}
        for t in problem.plan.targets:
            wanted.setdefault(t.group, set()).add(t.part)
        for entry in problem.plan.unmeasured:  # no activation site, but weights see them
            g, _, p = entry.rpartition("/")
            wanted.setdefault(g, set()).add(p)
        self.coords = _coordinates(analysis, wanted)
        self.extra = extra or {}
        self.alpha = alpha
        self.normalise = bool(extra)
        self.seed = seed
        table = analysis.coupling.table
        for c in self.coords:
            if c.outer is None:
                c.slices[""] = self.costs.find_slices(c, [table.find(c.parts[0].cls)])
            else:
                o = table.find(c.outer.cls)
                c.slices[""] = self.costs.find_slices(c, [o])
                for p in c.parts:
                    c.slices[p.name] = self.costs.find_slices(c, [o, table.find(p.cls)])
        self.rounds = 0
        self.pending = set().union(*(self._leaves(c) for c in self.coords))

    def _leaves(self, c: _Coordinate) -> set[int]:
        table = self.analysis.coupling.table
        return {table.find(p.cls) for p in c.parts} | (
            {table.find(c.outer.cls)} if c.outer is not None else set()
        )

    def _matrix(self, c: _Coordinate, key: str, perm: Permutation, n: int) -> torch.Tensor | None:
        """The coordinate's cost for one part (``key``: inner part name, "" = flat/outer).

        Until every coordinate has been visited once, tensors that also hold a coordinate not
        yet visited (whose identity order says nothing) are left out, when any others remain:
        a first pass in graph order then propagates exact information from the input side.
        """
        slices = c.slices.get(key, [])
        slices = [s for s in slices if not s.others & self.pending] or slices
        w = self.costs.cost(slices, perm, n)
        if w is not None and self.normalise:
            na, nb = self.costs.norms(slices, n)
            w = w / max(float((na.mean() * nb.mean()).sqrt()), 1e-30) * self.alpha
        part = key or (c.outer.name if c.outer is not None else c.parts[0].name)
        e = self.extra.get((c.group.name, part))
        if e is not None:
            w = e.double() if w is None else w + e.double()
        return w

    def step(self, c: _Coordinate, perm: Permutation) -> bool:
        """Re-solve one coordinate; True when its cost improved."""
        rest = _without(perm, c)
        g = c.group.name
        if c.outer is None:
            part = c.parts[0]
            m = self._matrix(c, "", rest, part.size)
            if m is None:
                return False
            old = perm.get(g, part.name)
            if (g, part.name) in self.rotated:
                old = torch.eye(part.size, dtype=torch.float64) if old is None else old
                new = procrustes(m, keeps_ones=self._keeps_ones(g, part.name))
                gain = rotation_score(m, new) - rotation_score(m, old)
            else:
                old = torch.arange(part.size) if old is None else old
                new = match(m)
                idx = torch.arange(part.size)
                gain = float(m[idx, new].sum()) - float(m[idx, old].sum())
            if gain > 1e-9 * float(m.abs().sum()):
                perm.set(g, part.name, new)
                return True
            return False
        h = c.outer.size
        rows = torch.arange(h)
        outer_m = self._matrix(c, "", rest, h)
        inner_m = {
            p.name: m
            for p in c.parts
            if (m := self._matrix(c, p.name, rest, h * p.size)) is not None
        }
        if outer_m is None and not inner_m:
            return False
        scores = torch.zeros(h, h, dtype=torch.float64) if outer_m is None else outer_m.clone()
        for p in c.parts:
            m = inner_m.get(p.name)
            if m is None:
                continue
            if (g, p.name) in self.rotated:
                scores += rotation_block_scores(m, h, keeps_ones=self._keeps_ones(g, p.name))
            elif p.name in c.targets:
                scores += block_scores(m, h)
            else:  # the channels inside a block stay in place
                scores += m.reshape(h, p.size, h, p.size).diagonal(dim1=1, dim2=3).sum(-1)
        old_rho = perm.get(g, c.outer.name)
        old_rho = rows if old_rho is None else old_rho
        rho = match(scores) if c.outer.name in c.targets else rows
        new: dict[str, torch.Tensor] = {}
        old_total = new_total = 0.0
        if outer_m is not None:
            old_total += float(outer_m[rows, old_rho].sum())
            new_total += float(outer_m[rows, rho].sum())
        for p in c.parts:
            m = inner_m.get(p.name)
            d = p.size
            turn = (g, p.name) in self.rotated
            ident = torch.eye(d, dtype=torch.float64) if turn else torch.arange(d)
            ident = ident.expand(h, *ident.shape)
            old_sigma = perm.get(g, p.name)
            old_sigma = ident if old_sigma is None else old_sigma
            if m is None:
                continue
            if turn:
                ones = self._keeps_ones(g, p.name)
                sigma = torch.stack(
                    [
                        procrustes(m[i * d : (i + 1) * d, r * d : (r + 1) * d], keeps_ones=ones)
                        for i, r in enumerate(rho)
                    ]
                )
                new[p.name] = sigma
            elif p.name in c.targets:
                sigma = torch.stack(
                    [match(m[i * d : (i + 1) * d, r * d : (r + 1) * d]) for i, r in enumerate(rho)]
                )
                new[p.name] = sigma
            else:
                sigma = ident
            old_total += _block_total(m, old_rho, old_sigma)
            new_total += _block_total(m, rho, sigma)
        scale = sum(float(x.abs().sum()) for x in inner_m.values())
        scale += 0.0 if outer_m is None else float(outer_m.abs().sum())
        if new_total > old_total + 1e-9 * scale:
            if c.outer.name in c.targets:
                perm.set(g, c.outer.name, rho)
            for name, sigma in new.items():
                perm.set(g, name, sigma)
            return True
        return False

    def _keeps_ones(self, group: str, part: str) -> bool:
        return self.analysis.symmetry(group, part).keeps_ones

    def run(self, max_rounds: int = MAX_ROUNDS) -> Permutation:
        perm = Permutation()
        gen = torch.Generator().manual_seed(self.seed)
        leaves = [self._leaves(c) for c in self.coords]
        # coordinate i's cost reads the permutations of the coordinates in needs[i]
        needs = [
            {j for j, lj in enumerate(leaves) if j != i and any(s.others & lj for s in slices)}
            for i, c in enumerate(self.coords)
            for slices in [[s for ss in c.slices.values() for s in ss]]
        ]
        clock, first = 0, 0
        solved, changed_at = [-1] * len(self.coords), [-1] * len(self.coords)
        for r in range(max_rounds):
            # round 1 in graph order (inputs first), then random orders as in git re-basin
            order = (
                range(len(self.coords))
                if r == 0
                else torch.randperm(len(self.coords), generator=gen).tolist()
            )
            changed = []
            for i in order:
                if solved[i] > first and all(changed_at[j] < solved[i] for j in needs[i]):
                    continue  # same cost matrix as last time: same answer
                clock += 1
                solved[i] = clock
                if self.step(self.coords[i], perm):
                    changed.append(self.coords[i].name)
                    changed_at[i] = clock
                self.pending -= leaves[i]
            self.rounds = r + 1
            first = clock if r == 0 else first  # round 1's costs left some tensors out
            log.info("weight matching round %d: %d coordinate(s) improved", r + 1, len(changed))
            if not changed:
                break
        else:
            log.warning("weight matching stopped after %d rounds, still improving", max_rounds)
        return perm


def _block_total(m: torch.Tensor, rho: torch.Tensor, sigma: torch.Tensor) -> float:
    """``Σ_i Σ_c m[i·d + c, rho[i]·d + sigma[i, c]]`` (for rotations ``sigma[i]``, the
    :func:`rotation_score` of each block pair)."""
    if sigma.is_floating_point():
        d = sigma.shape[-1]
        return sum(
            rotation_score(m[i * d : (i + 1) * d, r * d : (r + 1) * d], sigma[i])
            for i, r in enumerate(rho.tolist())
        )
    h, d = sigma.shape
    rows = (torch.arange(h)[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
    cols = (rho[:, None] * d + sigma).reshape(-1)
    return float(m[rows, cols].sum())


def weight_matching(
    problem: Problem, *, seed: int = 0, max_rounds: int = MAX_ROUNDS
) -> Permutation:
    """B's permutation towards A from the weights alone (git re-basin's coordinate descent).

    Example:
        >>> perm = weight_matching(Problem(analysis, plan, 1, states=[a, b]))  # doctest: +SKIP
    """
    return _Descent(problem, seed=seed).run(max_rounds)


def _reports(problem: Problem, perm: Permutation) -> list[GroupReport]:
    by_group = problem.plan.by_group()
    for entry in problem.plan.unmeasured:
        g, _, p = entry.rpartition("/")
        by_group.setdefault(g, {})[p] = None
    return [
        GroupReport(
            name=g.name,
            kind=g.kind,
            size=g.size,
            structure=g.structure,
            parts=sorted(by_group[g.name]),
            moved_fraction=perm.moved_fraction(g.name),
        )
        for g in problem.analysis.groups
        if g.name in by_group
    ]


@register_method
class WeightMatching(AlignmentMethod):
    """git re-basin's weight matching: no data, each group's cost from every tensor it moves
    with the other groups' current permutations applied; heads matched as whole heads first."""

    name = "weights"
    needs = frozenset({"weights"})
    description = "weight matching, no data (git re-basin's coordinate descent)"

    def align(self, problem: Problem, *, reports: bool = True) -> Solution:
        perm = weight_matching(problem)
        return Solution(perm, _reports(problem, perm) if reports else [])


@register_method
class HybridMatching(AlignmentMethod):
    """Activation correlations plus the normalised weight cost, in the same coordinate descent
    (started from nothing: the correlations are fixed, the weight cost follows the others)."""

    name = "hybrid"
    needs = frozenset({"correlation", "weights"})
    description = "correlation of activations + normalised weight matching cost"

    def align(self, problem: Problem, *, reports: bool = True) -> Solution:
        if problem.stats is None:
            raise PolicyError("method 'hybrid' needs calibration data; pass --calib PATH")
        extra = _correlations(problem)
        perm = _Descent(problem, extra=extra, alpha=HYBRID_ALPHA).run()
        return Solution(perm, _reports(problem, perm) if reports else [])


def _correlations(problem: Problem) -> dict[tuple[str, str], torch.Tensor]:
    """Per (group, part): the mean correlation (for rotated parts, the scaled covariance) over
    the sites that measure exactly that part's channels — a part on its own, or an inner part
    as ``outer × inner`` blocks (which is also what scores whole blocks)."""
    analysis, table = problem.analysis, problem.analysis.coupling.table
    by_group = problem.plan.by_group()
    out: dict[tuple[str, str], torch.Tensor] = {}
    for g in analysis.groups:
        if g.name not in by_group:
            continue
        shapes = {}
        for p in g.parts:
            leaf = table.find(p.cls)
            f = [table.find(g.part(p.outer).cls), leaf] if p.outer else [leaf]
            shapes[tuple(f)] = p.name
        sites = {(s.key, s.dim): s for t in by_group[g.name].values() for s in t.sites}
        views: dict[str, list[torch.Tensor]] = {}
        for s in sites.values():
            name = shapes.get(tuple(table.factors(analysis.coupling.cls(s.key, s.dim))))
            if name is None:
                continue
            if (g.name, name) in problem.plan.rotated:
                # rotations scramble correlations: the covariance, scaled like one
                site = problem.stats.site((s.key, s.dim))
                c = site.covariance(problem.pair)
                i, j = problem.pair
                scale = (site.std(i).square().mean() * site.std(j).square().mean()).sqrt()
                c = c / max(float(scale), 1e-30)
            else:
                c = problem.stats.correlation((s.key, s.dim), problem.pair)
            views.setdefault(name, []).append(torch.nan_to_num(c).double())
        for name, vs in views.items():
            out[(g.name, name)] = sum(vs) / len(vs)
    return out
