"""Creation rules: constants are free along every axis, position-dependent factories block."""

from __future__ import annotations

import functools

import torch
from torch import nn

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node


class Between(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)
        self.f = f

    def forward(self, x):
        return self.b(self.f(self.a(x)))


def _constants(h):
    h = h + torch.zeros(12) + torch.full((3, 12), 2.0)
    h = h * torch.ones_like(h) + h.new_zeros(2, 1, 12)
    return h + torch.zeros_like(h)


def _arange_channels(h):
    return h + torch.arange(12, dtype=h.dtype)


def _arange_tokens(h):
    return h * torch.arange(3, dtype=h.dtype).unsqueeze(-1)


def _triu(h):  # a causal mask over tokens, applied to a token × token product
    scores = h @ h.transpose(1, 2)
    mask = torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)
    return scores.masked_fill(mask, 0.0) @ h


CASES = {
    "constants": _constants,
    "arange_channels": _arange_channels,
    "arange_tokens": _arange_tokens,
    "triu": _triu,
}


@functools.cache
def between(name: str):
    torch.manual_seed(0)
    return analysed(Between(CASES[name]), x=torch.randn(2, 3, 8))


# ------------------------------------------------------------------------------ golden maps
def test_constants_are_free():
    a = between("constants")
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    for op in ("zeros", "full", "ones_like", "new_zeros", "zeros_like"):
        n = node(a, op)
        assert ax.out(n, -1) == ch, op  # tied to the channels only by the op that uses it
        for d in range(a.coupling.tensors[n.name].ndim):
            assert not any(op in r for r in ax.fixed(ax.out(n, d))), op
    assert ax.size(ax.out(node(a, "new_zeros"), 1)) == 1
    assert ax.movable(ch) and ch == ax.p("b.weight", 1)
    assert group_of(a, "a.weight", 0).structure == "12"


def test_arange_blocks_the_axis_it_spans():
    a = between("arange_channels")
    ax = Axes(a)
    n = node(a, "arange")
    assert_fixed_by(ax, ax.out(n, 0), "arange", "position")
    assert ax.out(n, 0) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert group_of(a, "a.weight", 0) is None

    a = between("arange_tokens")
    ax = Axes(a)
    assert_fixed_by(ax, ax.out(node(a, "arange"), 0), "arange")
    assert ax.movable(ax.p("a.weight", 0))


def test_triu_blocks_the_mask_axes():
    a = between("triu")
    ax = Axes(a)
    n = node(a, "triu")
    assert_fixed_by(ax, ax.out(n, 0), "triu")
    assert_fixed_by(ax, ax.out(n, 1), "triu")
    assert ax.movable(ax.p("a.weight", 0))


# ------------------------------------------------------------------------------ semantics
def test_creation_semantics():
    for name in CASES:
        assert_verifies(between(name))
