"""Solve a plan: one permutation per aligned part, from the calibration statistics.

- A part on its own (conv channels, FFN hidden units): one linear assignment on the summed
  correlation of its sites.
- Blocks (attention heads, grouped channels): for every pair of blocks, the best inner assignment
  gives a score; an outer assignment on those scores matches the blocks; then, for each matched
  pair, an inner assignment orders the channels (per part: ``vo``, ``qk``, ...). This is the
  paper's hierarchical head alignment.

Example:
    >>> perm, reports = solve(plan, analysis, stats)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from graphperm.analysis import Analysis, Part, PermutationGroup, Site
from graphperm.analysis.classes import Concat
from graphperm.apply import Indexer, Permutation
from graphperm.policy import Plan, Target
from graphperm.solve.assignment import (
    Matcher,
    block_scores,
    match,
    procrustes,
    rotation_block_scores,
)
from graphperm.solve.tiebreak import break_ties, fingerprints, settle, undecided
from graphperm.stats import Statistics

__all__ = ["GroupReport", "solve"]

log = logging.getLogger(__name__)


@dataclass
class GroupReport:
    """What alignment did to one group (a row of ``merge_report.json``)."""

    name: str
    kind: str
    size: int
    structure: str
    parts: list[str]
    moved_fraction: float = 0.0
    corr_before: float | None = None
    corr_after: float | None = None
    split_half_agreement: float | None = None
    matched_on_activations: int | None = None
    matched_on_weights: int | None = None
    sites: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)  # parts transformed by orthogonal matrices

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def solve(
    plan: Plan,
    analysis: Analysis,
    stats: Statistics,
    *,
    pair: tuple[int, int] = (0, 1),
    reports: bool = True,
    states: list[dict[str, torch.Tensor]] | None = None,
    assign: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Permutation, list[GroupReport]]:
    """Permutations of model ``pair[1]`` towards model ``pair[0]`` for every target of ``plan``,
    and (unless ``reports=False``) a per-group report.

    With ``states`` (every model's weights), units the correlations cannot separate (dead or
    duplicated activations: see :mod:`graphperm.solve.tiebreak`) are matched on their weights,
    within ``plan.policy.tie_margin``. ``assign`` replaces the linear assignment (a function
    from a score matrix to the permutation ``p``, B's unit ``p[i]`` for A's unit ``i``; the
    tie-break is then off).
    """
    solver = _Solver(analysis, stats, pair)
    if assign is not None:
        solver.assign, states = assign, None
    margin = plan.policy.tie_margin
    if states and margin > 0:
        solver.weights = (states[pair[0]], states[pair[1]])
        solver.margin = margin
    perm = Permutation()
    groups = {g.name: g for g in analysis.groups}
    with Matcher() as matcher:
        for gname, targets in plan.by_group().items():
            solver.group(groups[gname], targets, perm, matcher)
            solver.forget()  # one group's correlations at a time (75 MB per 3072-unit site)
    return perm, solver.reports(plan, perm) if reports else []


def _assign_job(assign: Callable[[torch.Tensor], torch.Tensor], m) -> torch.Tensor:
    """A :class:`Matcher` job running another assignment on the cleaned matrix."""
    return assign(torch.from_numpy(m))


class _Solver:
    def __init__(self, analysis: Analysis, stats: Statistics, pair: tuple[int, int]) -> None:
        self.analysis = analysis
        self.table = analysis.coupling.table
        self.stats = stats
        self.pair = pair
        self.weights: tuple[dict, dict] | None = None
        self.margin = 0.0
        self.counts: dict[str, list[int]] = {}  # group -> [on activations, on weights]
        self._by_target = {t: k for k, t in analysis.coupling.state.items()}
        self._corr: dict[tuple[str, int, bool], torch.Tensor] = {}
        self.assign: Callable[[torch.Tensor], torch.Tensor] = match

    def corr(self, site: Site, *, covariance: bool = False) -> torch.Tensor:
        """The site's correlation (or, for rotations, covariance) of A's against B's units."""
        key = (site.key, site.dim, covariance)
        if key not in self._corr:
            how = self.stats.covariance if covariance else self.stats.correlation
            self._corr[key] = how(key[:2], self.pair)
        return self._corr[key]

    def keeps_ones(self, group: PermutationGroup, part: str) -> bool:
        return self.analysis.symmetry(group.name, part).keeps_ones

    def factors(self, site: Site) -> list[int]:
        return self.table.factors(self.analysis.coupling.cls(site.key, site.dim))

    def blocks(
        self, site: Site, outer: Part, inner: Part | None = None, *, covariance: bool = False
    ) -> torch.Tensor | None:
        """The site's correlation over its channels that are exactly ``outer × inner`` blocks:
        all of them, or, where the site concatenates segments (a fused query/key/value
        projection), the sum of the diagonal blocks of the segments that are; None if none is.
        """
        spans = self._spans(self.analysis.coupling.cls(site.key, site.dim), outer, inner)
        if not spans:
            return None
        m = self.corr(site, covariance=covariance)
        if spans == [(0, m.shape[0])]:
            return m
        return sum(m[lo:hi, lo:hi] for lo, hi in spans)

    def _spans(
        self, c: int, outer: Part, inner: Part | None, offset: int = 0
    ) -> list[tuple[int, int]]:
        """Where class ``c`` (or the segments it concatenates, recursively) is ``outer × inner``."""
        f = self.table.factors(c)
        if (
            len(f) == 2
            and f[0] == self.table.find(outer.cls)
            and (inner is None or f[1] == self.table.find(inner.cls))
        ):
            return [(offset, offset + self.table.size(c))]
        d = self.table.decomp(c)
        if not isinstance(d, Concat):
            return []
        out = []
        for s in d.segments:
            out += self._spans(s, outer, inner, offset)
            offset += self.table.size(s)
        return out

    def forget(self) -> None:
        """Drop the cached correlations."""
        self._corr.clear()

    def group(
        self,
        group: PermutationGroup,
        targets: dict[str, Target],
        perm: Permutation,
        matcher: Matcher,
    ) -> None:
        parts = {p.name: p for p in group.parts}
        inners: dict[str, list[Part]] = {}
        for p in group.parts:
            if p.outer:
                inners.setdefault(p.outer, []).append(p)
        done: set[str] = set()
        for outer_name, inner_parts in inners.items():
            self._blocks(group, parts[outer_name], inner_parts, targets, perm)
            done |= {outer_name, *(p.name for p in inner_parts)}
        for name, target in targets.items():
            if name in done or target.transform == "zip":  # zipped: graphperm.solve.zipit
                continue
            part_cls = self.table.find(parts[name].cls)
            rotate = target.transform == "orth"
            flat = [
                self.corr(s, covariance=rotate)
                for s in target.sites
                if self.factors(s) == [part_cls]
            ]
            if not flat:
                log.warning(
                    "%s/%s: no site measures it on its own; left in place", group.name, name
                )
                continue
            total = flat[0] if len(flat) == 1 else sum(flat)  # no copy of a lone site's
            if rotate:  # orthogonal Procrustes on the cross-covariance
                perm.set(
                    group.name, name, procrustes(total, keeps_ones=self.keeps_ones(group, name))
                )
                continue
            job = None
            if self.assign is not match:
                job = partial(_assign_job, self.assign)
            elif self.weights is not None:  # the tie-break runs with the assignment, in a worker
                # which takes the fingerprints only if some units are undecided
                wa, wb = self.weights
                fingers = partial(self._finger_pair, wa, wb, group, name)
                job = partial(settle, fingers=fingers, margin=self.margin)
            matcher.submit(
                total,
                lambda r, g=group, n=name: perm.set(g.name, n, self._count(g, r)),
                job=job,
            )

    def _blocks(
        self,
        group: PermutationGroup,
        outer: Part,
        inner_parts: list[Part],
        targets: dict[str, Target],
        perm: Permutation,
    ) -> None:
        wanted = [
            p for p in inner_parts if p.name in targets and targets[p.name].transform != "zip"
        ]
        rho = torch.arange(outer.size)
        if outer.name in targets:
            sites = targets[outer.name].sites
            scores = [
                score
                for s in sites
                if (score := self._block_scores(group, s, outer, targets)) is not None
            ]
            if scores:
                rho = self.assign(sum(scores))
                perm.set(group.name, outer.name, rho)
            else:
                log.warning(
                    "%s/%s: no site measures whole blocks; left in place", group.name, outer.name
                )
        for inner in wanted:
            rotate = targets[inner.name].transform == "orth"
            views = [
                v
                for s in targets[inner.name].sites
                if (v := self.blocks(s, outer, inner, covariance=rotate)) is not None
            ]
            if not views:
                log.warning(
                    "%s/%s: no site measures it inside its blocks; left in place",
                    group.name,
                    inner.name,
                )
                continue
            total, d = sum(views), inner.size
            rows = []
            for i, r in enumerate(rho.tolist()):
                block = total[i * d : (i + 1) * d, r * d : (r + 1) * d]
                if rotate:
                    ones = self.keeps_ones(group, inner.name)
                    rows.append(procrustes(block, keeps_ones=ones))
                else:
                    p = self.assign(block)
                    rows.append(self._settle(group, inner.name, block, p, (i, r)))
            perm.set(group.name, inner.name, torch.stack(rows))

    def _block_scores(
        self, group: PermutationGroup, site: Site, outer: Part, targets: dict[str, Target]
    ) -> torch.Tensor | None:
        """How well each of A's blocks matches each of B's at ``site``: the best inner
        assignment's correlation, or, when the inner part is rotated, the best rotation's
        covariance (rotations scramble correlations, not covariances)."""
        f = self.factors(site)
        if len(f) != 2 or f[0] != self.table.find(outer.cls):
            return None
        inner = next((p for p in group.parts if self.table.find(p.cls) == f[1]), None)
        target = targets.get(inner.name) if inner is not None else None
        if target is not None and target.transform == "orth":
            ones = self.keeps_ones(group, inner.name)
            cov = self.corr(site, covariance=True)
            return rotation_block_scores(cov, outer.size, keeps_ones=ones)
        return block_scores(self.corr(site), outer.size)

    def _settle(
        self,
        group: PermutationGroup,
        part: str,
        corr: torch.Tensor,
        p: torch.Tensor,
        heads: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``p`` with the units the correlations leave undecided matched on weights
        (fingerprints are only taken when at least two units are undecided)."""
        on_weights = 0
        if self.weights is not None and int(undecided(corr, p, self.margin).sum()) >= 2:
            fa = self._fingerprints(
                self.weights[0], group, part, None if heads is None else heads[0]
            )
            fb = self._fingerprints(
                self.weights[1], group, part, None if heads is None else heads[1]
            )
            if fa is not None and fb is not None:
                p, on_weights = break_ties(corr, p, fa, fb, margin=self.margin)
        return self._count(group, (p, on_weights))

    def _count(
        self, group: PermutationGroup, result: torch.Tensor | tuple[torch.Tensor, int]
    ) -> torch.Tensor:
        """Count a part's units as matched on activations or on weights; its permutation."""
        p, on_weights = result if isinstance(result, tuple) else (result, 0)
        counts = self.counts.setdefault(group.name, [0, 0])
        counts[0] += p.numel() - on_weights
        counts[1] += on_weights
        return p

    def _finger_pair(
        self, state_a: dict, state_b: dict, group: PermutationGroup, part: str
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A's and B's weight fingerprints of a part's units."""
        return (
            self._fingerprints(state_a, group, part, None),
            self._fingerprints(state_b, group, part, None),
        )

    def _fingerprints(
        self, state: dict, group: PermutationGroup, part: str, head: int | None
    ) -> torch.Tensor | None:
        """Weight fingerprints of a part's units (of one head's channels for inner parts)."""
        classes = {p.name: self.table.find(p.cls) for p in group.parts}
        this = next(p for p in group.parts if p.name == part)
        leaf = classes[part]
        outer_cls = classes[this.outer] if this.outer is not None else None
        slices = []
        for name, dim in group.tensors:
            key = self._by_target.get(name)
            if key is None or name not in state:
                continue
            t = state[name].movedim(dim, 0)
            factors = self.table.factors(self.analysis.coupling.cls(key, dim))
            if head is None and factors == [leaf]:
                slices.append(t.reshape(t.shape[0], -1))
            elif head is not None and factors == [outer_cls, leaf]:
                n_heads = self.table.size(outer_cls)
                slices.append(t.reshape(n_heads, t.shape[0] // n_heads, -1)[head])
        return fingerprints(slices) if slices else None

    def reports(self, plan: Plan, perm: Permutation) -> list[GroupReport]:
        """Fraction moved and mean matched correlation before/after, per aligned group."""
        indexer = Indexer(self.analysis)
        by_group = plan.by_group()
        out = []
        for g in self.analysis.groups:
            targets = by_group.get(g.name)
            if not targets:
                continue
            sites = {(s.key, s.dim): s for t in targets.values() for s in t.sites}
            before, after = [], []
            rotated = sorted(p for gg, p in perm.rotated if gg == g.name)
            for s in sites.values():
                c = self.corr(s)
                idx = torch.arange(c.shape[0])
                before.append(float(c[idx, idx].mean()))
                if rotated:  # a rotated B′'s correlations need B's own covariance: not kept
                    continue
                cls = self.analysis.coupling.cls(s.key, s.dim)
                p = indexer.permute(idx, [cls], perm)
                after.append(float(c[idx, p].mean()))
            self.forget()
            out.append(
                GroupReport(
                    name=g.name,
                    kind=g.kind,
                    size=g.size,
                    structure=g.structure,
                    parts=sorted(targets),
                    moved_fraction=perm.moved_fraction(g.name),
                    corr_before=sum(before) / len(before) if before else None,
                    corr_after=sum(after) / len(after) if after else None,
                    matched_on_activations=self.counts.get(g.name, [None, None])[0],
                    matched_on_weights=self.counts.get(g.name, [None, None])[1],
                    sites=sorted({s.module for s in sites.values()}),
                    rotated=rotated,
                )
            )
        return out
