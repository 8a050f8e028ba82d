"""Reduction rules: a sum/mean/max/norm over an axis is invariant to permuting it; positional ops
(argmax, cumsum, sort) block the axis they look along."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node

# name -> (op in the graph, f(h) on h of shape (2, 3, 12) giving (2, 3, 12) or (2, 12))
OVER_CHANNELS = {  # reduce the channels, keep them by broadcasting back: invariant
    "sum_keep": ("sum", lambda h: h * h.sum(-1, keepdim=True)),
    "mean_keep": ("mean", lambda h: h - h.mean(-1, keepdim=True)),
    "amax_keep": ("amax", lambda h: h - h.amax(-1, keepdim=True)),
    "var": ("var", lambda h: h / (1 + h.var(-1)).unsqueeze(-1)),
    "norm": ("linalg_vector_norm", lambda h: h / h.norm(dim=-1, keepdim=True)),
    "logsumexp": ("logsumexp", lambda h: h - torch.logsumexp(h, -1, keepdim=True)),
    "sum_all": ("sum", lambda h: h * h.sum()),
}
OVER_TOKENS = {  # reduce the tokens: the channels pass through to the (2, 12) result
    "sum": ("sum", lambda h: h.sum(1)),
    "mean": ("mean", lambda h: h.mean(1)),
    "amax": ("amax", lambda h: h.amax(1)),
    "amin_keep": ("amin", lambda h: h.amin(1, keepdim=True)),
    "max_dim": ("max", lambda h: h.max(1).values),
    "nansum": ("nansum", lambda h: h.nansum(1)),
    "norm": ("linalg_vector_norm", lambda h: torch.linalg.vector_norm(h, dim=1)),
    "std_keep": ("std", lambda h: h.std(1, keepdim=True)),
    "prod": ("prod", lambda h: h.prod(1)),
}
CASES = {
    **{f"c_{k}": v for k, v in OVER_CHANNELS.items()},
    **{f"t_{k}": v for k, v in OVER_TOKENS.items()},
}


class Reduce(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)
        self.f = f

    def forward(self, x):
        return self.b(self.f(self.a(x)))


class Positional(nn.Module):
    """argmax / cumsum / sort / topk along tokens or channels."""

    def __init__(self, along: int) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)
        self.along = along

    def forward(self, x):
        h = self.a(x)
        d = self.along
        h = h.cumsum(d) + h.sort(d).values + h.flip(d)
        if d == 1:  # sort along the tokens with sort's default dim (-1)
            h = h + h.transpose(1, 2).sort().values.transpose(1, 2)
        picked = h.argmax(d)  # (2, 12) or (2, 3)
        top = h.topk(2, dim=d).values.sum(d)
        return self.b(h), picked, top


@functools.cache
def reduce(name: str):
    torch.manual_seed(0)
    return analysed(Reduce(CASES[name][1]), x=torch.randn(2, 3, 8))


@functools.cache
def positional(along: int):
    torch.manual_seed(0)
    return analysed(Positional(along), x=torch.randn(2, 3, 8))


# ------------------------------------------------------------------------------ golden maps
@pytest.mark.parametrize("name", sorted(k for k in CASES if k.startswith("c_")))
def test_reducing_channels_leaves_them_free(name):
    a = reduce(name)
    ax = Axes(a)
    r = node(a, CASES[name][0])
    ch = ax.arg(r, 0, 2)
    assert ch == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(ch), ax.fixed(ch)
    out = a.coupling.tensors[r.name]
    if out.ndim == 3:  # keepdim: the reduced axis is size 1, the others are kept
        assert ax.size(ax.out(r, 2)) == 1 and ax.out(r, 2) != ch
        assert [ax.out(r, d) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]
    elif out.ndim == 2:
        assert [ax.out(r, d) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]
    assert group_of(a, "a.weight", 0).structure == "12"


@pytest.mark.parametrize("name", sorted(k for k in CASES if k.startswith("t_")))
def test_reducing_tokens_passes_channels(name):
    a = reduce(name)
    ax = Axes(a)
    r = node(a, CASES[name][0])
    ch = ax.p("a.weight", 0)
    keep = name.endswith("_keep")
    key = r.name if r.name in a.coupling.tensors else f"{r.name}#0"
    assert a.coupling.tensors[key].ndim == (3 if keep else 2)
    assert ax.v(key, -1) == ax.arg(r, 0, 2) == ch == ax.p("b.weight", 1)
    assert ax.v(key, 0) == ax.v("x", 0)
    if keep:
        assert ax.size(ax.v(key, 1)) == 1
    assert ax.movable(ch)


def test_max_dim_blocks_the_axis_its_indices_name():
    a = reduce("t_max_dim")
    ax = Axes(a)
    r = node(a, "max")
    assert_fixed_by(ax, ax.arg(r, 0, 1), "aten.max.dim")
    assert ax.v(f"{r.name}#1", -1) == ax.p("a.weight", 0)  # indices follow the channels


def test_positional_ops_block_their_axis():
    along_channels = positional(-1)
    ax = Axes(along_channels)
    ch = ax.p("a.weight", 0)
    for op in ("cumsum", "sort", "flip", "argmax", "topk"):
        n = node(along_channels, op)
        assert op in " ".join(ax.fixed(ax.arg(n, 0, 2))), op
        if op in ("sort", "topk"):  # values and indices keep batch and tokens
            for element in (0, 1):
                assert [ax.out(n, d, element) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]
    assert not ax.movable(ch) and not ax.movable(ax.p("b.weight", 1))
    assert group_of(along_channels, "a.weight", 0) is None
    assert group_of(along_channels, "b.weight", 1) is None

    along_tokens = positional(1)
    ax = Axes(along_tokens)
    ch = ax.p("a.weight", 0)
    for op, element in (("cumsum", None), ("sort", 0), ("flip", None), ("sort", 1)):
        n = node(along_tokens, op)
        assert ax.out(n, 2, element) == ch, op
        assert op in " ".join(ax.fixed(ax.out(n, 1, element))), op
    by_default = node(along_tokens, "sort", 1)  # (2, 12, 3) sorted along its last axis
    assert ax.out(by_default, 1, 0) == ax.out(by_default, 1, 1) == ch
    assert ax.out(node(along_tokens, "argmax"), 1) == ch  # (2, 12): the channels remain
    assert ax.movable(ch) and group_of(along_tokens, "a.weight", 0).structure == "12"


# ------------------------------------------------------------------------------ semantics
@pytest.mark.parametrize("name", sorted(CASES))
def test_reduction_semantics(name):
    assert_verifies(reduce(name))


@pytest.mark.parametrize("along", [1, -1])
def test_positional_semantics(along):
    assert_verifies(positional(along))
