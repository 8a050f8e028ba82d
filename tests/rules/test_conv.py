"""Convolution rules: channels like a linear layer, spatial axes blocked, groups as blocks with
per-group inner permutations, weight normalisation, pooling."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphperm.analysis.rules
from graphperm.analysis.context import RuleContext
from graphperm.apply import Indexer

from .helpers import (
    Axes,
    analysed,
    assert_fixed_by,
    assert_verifies,
    group_of,
    node,
    verify_fails,
)


class Plain(nn.Module):
    """conv1d (groups=1) -> relu -> max pool -> adaptive avg pool -> 1×1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 8, 3)
        self.c = nn.Conv1d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = nn.functional.max_pool1d(h, 2)
        h = nn.functional.adaptive_avg_pool1d(h, 3)
        return self.c(h)


class Grouped(nn.Module):
    """conv a -> grouped conv b (residual, optionally weight-normed over the kernel axis, like
    HuBERT's positional convolution) -> conv c."""

    def __init__(self, weight_norm: int | None = None) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 8, 3)
        self.b = nn.Conv1d(8, 8, 3, groups=2, padding=1)
        self.c = nn.Conv1d(8, 4, 1)
        if weight_norm is not None:
            self.b = nn.utils.parametrizations.weight_norm(self.b, name="weight", dim=weight_norm)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + nn.functional.gelu(self.b(h))
        return self.c(h)


class Widening(nn.Module):
    """A grouped conv from 8 to 12 channels in 4 groups (2 in, 3 out per group), no residual."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 8, 1)
        self.b = nn.Conv1d(8, 12, 3, groups=4)
        self.c = nn.Conv1d(12, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Image(nn.Module):
    """conv2d -> relu -> avg pool 2d -> grouped conv2d -> conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.pool = nn.AvgPool2d(2)
        self.b = nn.Conv2d(8, 8, 1, groups=4)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.pool(torch.relu(self.a(x))))))


class Convolution(nn.Module):
    """The generic ``aten.convolution`` op (what decomposed graphs hold), plain or transposed,
    8 -> 6 channels in 2 groups."""

    def __init__(self, transposed: bool) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 8, 1)
        self.t = (nn.ConvTranspose1d if transposed else nn.Conv1d)(8, 6, 3, groups=2)
        self.c = nn.Conv1d(6, 4, 1)
        self.transposed = transposed

    def forward(self, x):
        h = torch.relu(self.a(x))
        t = self.t
        h = torch.ops.aten.convolution.default(
            h, t.weight, t.bias, [1], [0], [1], self.transposed, [0], 2
        )
        return self.c(torch.relu(h))


class ConvTranspose(nn.Module):
    """conv1d -> ConvTranspose1d (8 -> 6 channels in 2 groups, stride 2: upsampling) -> conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 8, 1)
        self.t = nn.ConvTranspose1d(8, 6, 4, stride=2, padding=1, groups=2)
        self.c = nn.Conv1d(6, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.t(torch.relu(self.a(x)))))


@functools.cache
def conv_transpose():
    torch.manual_seed(0)
    return analysed(ConvTranspose(), x=torch.randn(2, 4, 5))


@functools.cache
def plain():
    torch.manual_seed(0)
    return analysed(Plain(), x=torch.randn(2, 4, 14))


@functools.cache
def grouped(weight_norm: int | None = None):
    torch.manual_seed(0)
    module = Grouped(weight_norm)
    if weight_norm is not None:  # make g differ from ||v|| so that the norm matters
        with torch.no_grad():
            module.b.parametrizations.weight.original0.uniform_(0.5, 2.0)
    return analysed(module, x=torch.randn(2, 4, 10))


@functools.cache
def widening():
    torch.manual_seed(0)
    return analysed(Widening(), x=torch.randn(2, 4, 10))


@functools.cache
def convolution(transposed: bool):
    torch.manual_seed(0)
    return analysed(Convolution(transposed), x=torch.randn(2, 4, 5))


@functools.cache
def image():
    torch.manual_seed(0)
    return analysed(Image(), x=torch.randn(2, 3, 10, 10))


# ------------------------------------------------------------------------------ golden maps
def test_conv1d_channels_like_linear_and_time_blocked():
    a = plain()
    ax = Axes(a)
    conv = node(a, "conv1d")
    ch = ax.out(conv, 1)
    assert ch == ax.p("a.weight", 0) == ax.p("a.bias", 0) == ax.p("c.weight", 1)
    assert ax.arg(conv, 0, 1) == ax.p("a.weight", 1) == ax.v("x", 1)
    assert ax.out(conv, 0) == ax.v("x", 0)
    assert_fixed_by(ax, ax.p("a.weight", 2), "convolution slides")
    assert_fixed_by(ax, ax.out(conv, 2), "convolution slides")
    assert "conv_out" in ax.tags(ch) and "conv_in" in ax.tags(ch)
    assert "conv_in" in ax.tags(ax.v("x", 1))
    assert ax.movable(ch) and ax.factors(ch) == [8]
    g = group_of(a, "a.weight", 0)
    assert g.kind == "conv" and g.structure == "8"


def test_pooling_passes_channels_and_blocks_time():
    a = plain()
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    for op in ("max_pool1d", "adaptive_avg_pool1d"):
        pool = node(a, op)
        assert [ax.out(pool, 0), ax.out(pool, 1)] == [ax.v("x", 0), ch]
        assert_fixed_by(ax, ax.out(pool, 2), op)
        assert_fixed_by(ax, ax.arg(pool, 0, 2), op)


def test_grouped_conv_blocks_channels_into_groups():
    a = grouped()
    ax = Axes(a)
    conv = node(a, "conv1d", 1)
    ch = ax.arg(conv, 0, 1)
    assert ch == ax.out(conv, 1) == ax.p("b.weight", 0) == ax.p("a.weight", 0)
    groups, inner = ax.t.factors(ch)
    assert (ax.size(groups), ax.size(inner)) == (2, 4)
    assert ax.p("b.weight", 1) == inner  # C_in / groups
    assert a.deps == {inner: groups}
    assert "skip" in ax.tags(ch)
    g = group_of(a, "b.weight", 0)
    assert g.structure == "2 blocks × 4"
    assert {p.name: (p.size, p.outer) for p in g.parts} == {
        "blocks": (2, None),
        "channels": (4, "blocks"),
    }
    assert g is group_of(a, "b.weight", 1) is group_of(a, "c.weight", 1)


def test_widening_grouped_conv_shares_groups_between_in_and_out():
    a = widening()
    ax = Axes(a)
    conv = node(a, "conv1d", 1)
    g_in, c_in = ax.t.factors(ax.arg(conv, 0, 1))
    g_out, c_out = ax.t.factors(ax.out(conv, 1))
    assert g_in == g_out and ax.size(g_in) == 4
    assert (ax.size(c_in), ax.size(c_out)) == (2, 3)
    assert ax.p("b.weight", 1) == c_in
    assert ax.t.factors(ax.p("b.weight", 0)) == [g_out, c_out]
    assert ax.t.factors(ax.p("a.weight", 0)) == [g_in, c_in]
    assert a.deps == {c_in: g_in, c_out: g_in}
    g = group_of(a, "a.weight", 0)
    assert g is group_of(a, "c.weight", 1)
    assert sorted((p.size, p.outer) for p in g.parts) == [
        (2, "blocks"),
        (3, "blocks"),
        (4, None),
    ]


def test_conv2d_and_avg_pool2d():
    a = image()
    ax = Axes(a)
    conv, pool = node(a, "conv2d"), node(a, "avg_pool2d")
    ch = ax.out(conv, 1)
    assert ch == ax.out(pool, 1) == ax.p("a.weight", 0)
    for d in (2, 3):
        assert_fixed_by(ax, ax.p("a.weight", d), "convolution slides")
        assert_fixed_by(ax, ax.out(pool, d), "avg_pool2d")
    assert ax.factors(ch) == [4, 2]
    groups, inner = ax.t.factors(ch)
    assert ax.p("b.weight", 1) == inner and a.deps[inner] == groups
    assert group_of(a, "a.weight", 0).structure == "4 blocks × (channels0 2, channels1 2)"


@pytest.mark.parametrize("transposed", [False, True])
def test_generic_convolution_plain_and_transposed(transposed):
    a = convolution(transposed)
    ax = Axes(a)
    conv = node(a, "convolution")
    g_in, c_in = ax.t.factors(ax.arg(conv, 0, 1))
    g_out, c_out = ax.t.factors(ax.out(conv, 1))
    assert g_in == g_out and [ax.size(c) for c in (g_in, c_in, c_out)] == [2, 4, 3]
    # plain: weight (C_out, C_in / g, k); transposed: weight (C_in, C_out / g, k)
    rows, inner = (ax.arg(conv, 0, 1), c_out) if transposed else (ax.out(conv, 1), c_in)
    assert ax.p("t.weight", 0) == rows and ax.p("t.weight", 1) == inner
    assert ax.p("t.bias", 0) == ax.out(conv, 1)
    assert_fixed_by(ax, ax.p("t.weight", 2), "convolution slides")
    assert a.deps == {c_in: g_in, c_out: g_in}
    assert group_of(a, "t.weight", 0).structure == "2 blocks × (channels0 4, channels1 3)"


def test_conv_transpose1d_is_a_transposed_convolution():
    """``nn.ConvTranspose1d`` exports as ``aten.conv_transpose1d`` (EnCodec's decoder): weight
    (C_in, C_out / g, k), rows grouped like the input, time blocked."""
    a = conv_transpose()
    ax = Axes(a)
    conv = node(a, "conv_transpose1d")
    g_in, c_in = ax.t.factors(ax.arg(conv, 0, 1))
    g_out, c_out = ax.t.factors(ax.out(conv, 1))
    assert g_in == g_out and [ax.size(c) for c in (g_in, c_in, c_out)] == [2, 4, 3]
    assert ax.p("t.weight", 0) == ax.arg(conv, 0, 1) and ax.p("t.weight", 1) == c_out
    assert ax.p("t.bias", 0) == ax.out(conv, 1)
    assert_fixed_by(ax, ax.out(conv, 2), "convolution slides")
    assert "weight_in" in ax.tags(ax.p("t.weight", 0))


@pytest.mark.parametrize("dim", [2, 0])
def test_weight_norm_follows_the_grouped_weight(dim):
    a = grouped(dim)
    ax = Axes(a)
    wn = node(a, "_weight_norm")
    v, g = "b.parametrizations.weight.original1", "b.parametrizations.weight.original0"
    assert [ax.arg(wn, 0, d) for d in range(3)] == [ax.out(wn, d) for d in range(3)]
    assert ax.p(v, 0) == ax.out(node(a, "conv1d", 1), 1)
    assert ax.factors(ax.p(v, 0)) == [2, 4]
    assert ax.p(g, dim) == ax.p(v, dim)
    for d in {0, 1, 2} - {dim}:
        assert ax.size(ax.p(g, d)) == 1
    assert_fixed_by(ax, ax.p(v, 2), "convolution slides")
    group = group_of(a, v, 0)
    assert group.structure == "2 blocks × 4"
    assert (group_of(a, g, 0) is group) == (dim == 0)


# ------------------------------------------------------------------------------ semantics
def test_conv_semantics():
    for analysis in (plain(), grouped(), widening(), image(), convolution(False)):
        assert_verifies(analysis)
    assert_verifies(convolution(True))
    assert_verifies(conv_transpose())
    # the channels inside each group are drawn per group
    g = group_of(grouped(), "b.weight", 0)
    assert Indexer(grouped()).shapes()[g.name] == {"blocks": (2,), "channels": (2, 4)}


@pytest.mark.parametrize("dim", [2, 0])
def test_weight_norm_semantics(dim):
    assert_verifies(grouped(dim))


def test_grouped_conv_rule_that_ignores_groups_is_caught(monkeypatch):
    """A rule that treats a grouped conv's channels as freely permutable must fail verify."""
    conv = graphperm.analysis.rules.RULES["aten.conv1d"]

    def ignores_groups(ctx: RuleContext) -> None:
        if int(ctx.raw(6, "groups", 1)) == 1:
            return conv(ctx)
        x, w, b, out = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.out
        ctx.block(x[2], w[2], out[2], reason="slides")
        ctx.tie(x[0], out[0])
        ctx.tie(out[1], w[0])
        ctx.tie(b[0], w[0])
        ctx.tie(x[1], out[1])  # wrong: channels would mix across groups
        ctx.reduce(w[1])

    monkeypatch.setitem(graphperm.analysis.rules.RULES, "aten.conv1d", ignores_groups)
    torch.manual_seed(0)
    a = analysed(Grouped(), x=torch.randn(2, 4, 10))
    assert group_of(a, "b.weight", 0).structure == "8"
    assert verify_fails(a)


# ----------------------------------------------------------------- im2col, pools that keep channels
class SpanConv(nn.Module):
    """ConvBERT's span convolution: nn.Unfold over tokens of (B, C, L, 1), each channel's window
    weighted per token, then read out by a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.unfold = nn.Unfold(kernel_size=[3, 1], padding=[1, 0])
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        h = self.a(x)  # (B, L, C)
        cols = self.unfold(h.transpose(1, 2).unsqueeze(-1))  # (B, C·3, L)
        cols = cols.transpose(1, 2).reshape(x.shape[0], x.shape[1], 12, 3)
        return self.b(cols.sum(-1))


class PoolTokens(nn.Module):
    """Funnel's pooling: avg_pool2d with a (2, 1) window over (tokens, channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        h = F.avg_pool2d(self.a(x).unsqueeze(1), (2, 1), stride=(2, 1), ceil_mode=True)
        return self.b(h.squeeze(1))


@functools.cache
def span_conv():
    torch.manual_seed(0)
    return analysed(SpanConv(), x=torch.randn(2, 5, 8))


@functools.cache
def pool_tokens():
    torch.manual_seed(0)
    return analysed(PoolTokens(), x=torch.randn(2, 6, 8))


def test_im2col_keeps_channels_outermost_and_blocks_offsets_and_positions():
    a = span_conv()
    ax = Axes(a)
    n = node(a, "im2col")
    assert ax.factors(ax.out(n, 1)) == [12, 3]
    channels, offsets = ax.t.factors(ax.out(n, 1))
    assert channels == ax.arg(n, 0, 1) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(channels) and not a.coupling.unknown
    assert_fixed_by(ax, offsets, "kernel offsets")
    assert_fixed_by(ax, ax.out(n, 2), "im2col")


def test_pool_with_a_window_of_one_keeps_that_axis():
    a = pool_tokens()
    ax = Axes(a)
    n = node(a, "avg_pool2d")
    assert ax.arg(n, 0, 3) == ax.out(n, 3) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(ax.out(n, 3))
    assert_fixed_by(ax, ax.out(n, 2), "avg_pool2d")


def test_im2col_and_pool_semantics():
    for analysis in (span_conv(), pool_tokens()):
        assert_verifies(analysis)


def test_weight_in_marks_a_convolution_weight_s_input_channels():
    """The axis a ZipIt! unmerge acts on: (C_out, C_in / g, k) -> 1; transposed (C_in, ...) -> 0."""

    def weight_in(a, state_key: str) -> set[int]:
        c = a.coupling
        key = next(k for k, v in c.state.items() if v == state_key)
        return {d for (k, d, v), tags in c.axis_tags.items() if k == key and "weight_in" in tags}

    assert weight_in(plain(), "a.weight") == {1} and weight_in(plain(), "c.weight") == {1}
    assert weight_in(grouped(), "b.weight") == {1}
    assert weight_in(convolution(True), "t.weight") == {0}
