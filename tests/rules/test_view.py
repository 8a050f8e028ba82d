"""View rules: reshapes that split, merge or regroup axes; transposes, permutes, broadcasts."""

from __future__ import annotations

import functools

import torch
from torch import nn

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node


class Between(nn.Module):
    """x -> Linear(8, n) -> f -> Linear(m, 8): the views in ``f`` connect two weights."""

    def __init__(self, f, n: int = 24, m: int = 24) -> None:
        super().__init__()
        self.a = nn.Linear(8, n)
        self.b = nn.Linear(m, 8)
        self.f = f

    def forward(self, x):
        return self.b(self.f(self.a(x)))


def _heads(h):  # (2, 3, 24) -> (2, 3, 4, 6) -> (2, 3, 6, 4) -> (2, 3, 24)
    return h.view(2, 3, 4, 6).transpose(-1, -2).reshape(2, 3, 24)


def _regroup(h):  # (2, 3, 24) -> (2, 3, 6, 4) -> (2, 3, 4, 6) -> (2, 3, 24): no common blocks
    return h.view(2, 3, 6, 4).reshape(2, 3, 4, 6).reshape(2, 3, 24)


def _refine(h):  # (2, 3, 4, 6) -> (2, 3, 2, 12): common refinement 2 × 2 × 6
    return h.view(2, 3, 4, 6).reshape(2, 3, 2, 12).reshape(2, 3, 24)


def _moves(h):  # permute, unsqueeze, expand, sum over the new axis, flatten
    h = h.view(2, 3, 4, 6).permute(0, 1, 3, 2).unsqueeze(2).expand(2, 3, 5, 6, 4)
    return h.sum(2).flatten(2)


def _flatten(h):  # (2, 3, 6) -> (2, 18): tokens × channels
    return h.flatten(1)


def _movedim(h):  # (2, 3, 24) -> (24, 2, 3) -> squeeze/unsqueeze round trip -> back
    return h.movedim(-1, 0).unsqueeze(0).squeeze(0).movedim(0, -1)


@functools.cache
def between(name: str):
    torch.manual_seed(0)
    f = {
        "heads": _heads,
        "regroup": _regroup,
        "refine": _refine,
        "moves": _moves,
        "movedim": _movedim,
    }
    if name == "flatten":
        return analysed(Between(_flatten, n=6, m=18), x=torch.randn(2, 3, 8))
    return analysed(Between(f[name]), x=torch.randn(2, 3, 8))


# ------------------------------------------------------------------------------ golden maps
def test_view_splits_into_blocks_and_transpose_swaps_them():
    a = between("heads")
    ax = Axes(a)
    view, tr = node(a, "view"), node(a, "transpose")
    outer, inner = ax.out(view, 2), ax.out(view, 3)
    assert (ax.size(outer), ax.size(inner)) == (4, 6)
    assert ax.t.factors(ax.p("a.weight", 0)) == [outer, inner]
    assert ax.factors(ax.p("a.weight", 0)) == [4, 6]
    assert [ax.out(tr, 2), ax.out(tr, 3)] == [inner, outer]
    assert ax.t.factors(ax.p("b.weight", 1)) == [inner, outer]
    assert ax.factors(ax.p("b.weight", 1)) == [6, 4]
    assert ax.movable(outer) and ax.movable(inner)
    # batch and token axes pass straight through every view
    for n in (view, tr, node(a, "reshape")):
        assert [ax.out(n, 0), ax.out(n, 1)] == [ax.v("x", 0), ax.v("x", 1)]


def test_flatten_merges_tokens_and_channels():
    a = between("flatten")
    ax = Axes(a)
    flat = ax.out(node(a, "flatten"), 1)
    assert ax.t.factors(flat) == [ax.v("x", 1), ax.p("a.weight", 0)]
    assert ax.factors(ax.p("b.weight", 1)) == [3, 6]
    assert ax.fixed(ax.v("x", 1)) and ax.movable(ax.p("a.weight", 0))


def test_reshape_without_common_blocks_is_fixed():
    a = between("regroup")
    ax = Axes(a)
    view, reshape = node(a, "view"), node(a, "reshape")
    for d in (2, 3):
        assert not ax.movable(ax.out(view, d))
        assert_fixed_by(ax, ax.out(reshape, d), "6×4", "4×6", "clash")
    assert ax.t.factors(ax.p("a.weight", 0)) == [ax.out(view, 2), ax.out(view, 3)]
    assert ax.t.factors(ax.p("b.weight", 1)) == [ax.out(reshape, 2), ax.out(reshape, 3)]
    assert not ax.movable(ax.p("a.weight", 0))
    assert not ax.movable(ax.p("b.weight", 1))
    assert group_of(a, "a.weight", 0) is None and group_of(a, "b.weight", 1) is None


def test_reshape_with_a_common_refinement_keeps_it():
    a = between("refine")
    ax = Axes(a)
    assert ax.factors(ax.p("a.weight", 0)) == [2, 2, 6]
    assert ax.t.factors(ax.p("a.weight", 0)) == ax.t.factors(ax.p("b.weight", 1))
    g = group_of(a, "a.weight", 0)
    assert g is group_of(a, "b.weight", 1)
    assert sorted(p.size for p in g.parts) == [2, 2, 6]


def test_permute_unsqueeze_expand():
    a = between("moves")
    ax = Axes(a)
    view, perm = node(a, "view"), node(a, "permute")
    unsq, exp = node(a, "unsqueeze"), node(a, "expand")
    four, six = ax.out(view, 2), ax.out(view, 3)
    assert [ax.out(perm, d) for d in range(4)] == [ax.v("x", 0), ax.v("x", 1), six, four]
    # the new size-1 axis is free; the expanded axis is a new, free class
    assert ax.size(ax.out(unsq, 2)) == 1 and not ax.fixed(ax.out(unsq, 2))
    new = ax.out(exp, 2)
    assert ax.size(new) == 5 and not ax.fixed(new) and new not in (four, six)
    assert [ax.out(exp, 3), ax.out(exp, 4)] == [six, four]
    assert ax.t.factors(ax.p("b.weight", 1)) == [six, four]


def test_movedim_squeeze_unsqueeze_round_trip():
    a = between("movedim")
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    b, t = ax.v("x", 0), ax.v("x", 1)
    assert [ax.out(node(a, "movedim"), d) for d in range(3)] == [ch, b, t]
    unsq = node(a, "unsqueeze")
    assert ax.size(ax.out(unsq, 0)) == 1
    assert [ax.out(unsq, d) for d in (1, 2, 3)] == [ch, b, t]
    assert [ax.out(node(a, "squeeze"), d) for d in range(3)] == [ch, b, t]
    assert [ax.out(node(a, "movedim", 1), d) for d in range(3)] == [b, t, ch]
    assert ax.p("b.weight", 1) == ch and ax.movable(ch)


# ------------------------------------------------------------------------------ semantics
def test_view_semantics():
    for name in ("heads", "flatten", "refine", "moves", "movedim"):
        assert_verifies(between(name))


def test_unfactorable_reshape_semantics():
    """Nothing on either side of the regrouping may move, but the rest still does, safely."""
    a = between("regroup")
    assert [g.tensors for g in a.groups] == [(("b.bias", 0), ("b.weight", 0))]
    assert_verifies(a)


# ------------------------------------------------------------------ as_strided windows
class Windows(nn.Module):
    """Longformer's chunking: (tokens 8, channels 6) seen as 3 overlapping windows of 4 tokens
    (stride 2 tokens) by ``as_strided``; channels stay whole, windows overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 4)

    def forward(self, x):
        h = self.a(x).contiguous()  # (8, 6)
        w = h.as_strided((3, 4, 6), (12, 6, 1))  # window i: tokens 2i .. 2i+3
        return self.b(w.sum(1))


@functools.cache
def windows():
    torch.manual_seed(0)
    return analysed(Windows(), x=torch.randn(8, 4))


def test_as_strided_ties_the_dims_it_keeps_whole():
    a = windows()
    ax = Axes(a)
    n = node(a, "as_strided")
    assert ax.arg(n, 0, 1) == ax.out(n, 2) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(ax.out(n, 2))
    assert_fixed_by(ax, ax.arg(n, 0, 0), "overlapping or partial windows")
    assert_fixed_by(ax, ax.out(n, 0), "overlapping or partial windows")


def test_as_strided_blocks_a_dim_whose_blocks_overlap_others():
    class Skewed(nn.Module):  # stride 5 over rows of 6: each "row" starts mid-row
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 4)

        def forward(self, x):
            return self.b(self.a(x).contiguous().as_strided((3, 6), (5, 1)))

    torch.manual_seed(0)
    a = analysed(Skewed(), x=torch.randn(8, 4))
    assert_fixed_by(Axes(a), Axes(a).p("a.weight", 0), "overlapping or partial windows")


def test_as_strided_semantics():
    assert_verifies(windows())
