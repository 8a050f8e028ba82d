"""Normalisation rules: layer/RMS norm over the channels, group norm as blocks, batch norm with
running statistics."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import graphperm.analysis.rules
from graphperm.analysis.context import RuleContext

from .helpers import Axes, analysed, assert_verifies, group_of, node, verify_fails


def _randomise(module: nn.Module) -> nn.Module:
    """Non-trivial affine weights, so that forgetting to permute them shows in the output."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("n"):
                p.normal_()
    return module


class Layer(nn.Module):
    """Linear -> LayerNorm -> RMSNorm -> LayerNorm over (tokens, channels) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.n1 = nn.LayerNorm(16)
        self.n2 = nn.RMSNorm(16)
        self.n3 = nn.LayerNorm((3, 16))
        self.b = nn.Linear(16, 8)

    def forward(self, x):
        return self.b(self.n3(self.n2(self.n1(self.a(x)))))


class Channels(nn.Module):
    """conv -> a channel norm (group norm, batch norm) -> conv."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 8, 1)
        self.n = norm
        self.c = nn.Conv1d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.n(self.a(x))))


@functools.cache
def layer():
    torch.manual_seed(0)
    return analysed(_randomise(Layer()), x=torch.randn(2, 3, 8))


@functools.cache
def group(groups: int):
    torch.manual_seed(0)
    return analysed(_randomise(Channels(nn.GroupNorm(groups, 8))), x=torch.randn(2, 4, 5))


@functools.cache
def batch():
    torch.manual_seed(0)
    module = _randomise(Channels(nn.BatchNorm1d(8)))
    module.n.running_mean.normal_()
    module.n.running_var.uniform_(0.5, 2.0)
    return analysed(module, x=torch.randn(2, 4, 5))


# ------------------------------------------------------------------------------ golden maps
def test_layer_norm_ties_weight_bias_and_channels():
    a = layer()
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    for i, key in enumerate(("n1", "n3")):
        ln = node(a, "layer_norm", i)
        assert [ax.arg(ln, 0, d) for d in range(3)] == [ax.out(ln, d) for d in range(3)]
        assert ax.p(f"{key}.weight", -1) == ax.p(f"{key}.bias", -1) == ax.out(ln, 2) == ch
    assert ax.p("n3.weight", 0) == ax.v("x", 1)  # the normalised token axis
    assert ax.p("n2.weight", 0) == ax.out(node(a, "rms_norm"), 2) == ch
    assert ax.movable(ch) and ch == ax.p("b.weight", 1)
    assert group_of(a, "n1.weight", 0).structure == "16"


@pytest.mark.parametrize("groups", [2, 4])
def test_group_norm_with_some_groups_makes_blocks(groups):
    a = group(groups)
    ax = Axes(a)
    gn = node(a, "group_norm")
    ch = ax.out(gn, 1)
    assert ch == ax.arg(gn, 0, 1) == ax.p("n.weight", 0) == ax.p("n.bias", 0)
    assert ch == ax.p("a.weight", 0) == ax.p("c.weight", 1)
    outer, inner = ax.t.factors(ch)
    assert (ax.size(outer), ax.size(inner)) == (groups, 8 // groups)
    assert a.deps == {inner: outer}
    assert group_of(a, "n.weight", 0).structure == f"{groups} blocks × {8 // groups}"


@pytest.mark.parametrize("groups", [1, 8])
def test_group_norm_with_one_or_all_groups_is_flat(groups):
    a = group(groups)
    ax = Axes(a)
    ch = ax.p("n.weight", 0)
    assert ch == ax.out(node(a, "group_norm"), 1) == ax.p("a.weight", 0)
    assert ax.factors(ch) == [8] and ax.movable(ch)
    assert group_of(a, "n.weight", 0).structure == "8"


def test_batch_norm_ties_running_statistics():
    a = batch()
    ax = Axes(a)
    bn = node(a, "batch_norm")
    ch = ax.out(bn, 1)
    for key in ("n.weight", "n.bias", "n.running_mean", "n.running_var", "a.weight"):
        assert ax.p(key, 0) == ch, key
    assert [ax.out(bn, d) for d in (0, 2)] == [ax.arg(bn, 0, 0), ax.arg(bn, 0, 2)]
    g = group_of(a, "n.running_mean", 0)
    assert ("n.running_var", 0) in g.tensors and g.structure == "8"
    assert any("num_batches_tracked" in w for w in a.warnings)


# ------------------------------------------------------------------------------ semantics
def test_layer_norm_semantics():
    assert_verifies(layer())


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_group_norm_semantics(groups):
    assert_verifies(group(groups))


def test_batch_norm_semantics():
    assert_verifies(batch())


def test_layer_norm_rule_that_forgets_the_weight_is_caught(monkeypatch):
    def forgets_weight(ctx: RuleContext) -> None:
        x = ctx.arg(0)
        ctx.same(x, ctx.out)
        ctx.reduce(ctx.arg(2)[0], ctx.arg(3)[0])  # wrong: weight and bias stay in place

    monkeypatch.setitem(graphperm.analysis.rules.RULES, "aten.layer_norm", forgets_weight)
    torch.manual_seed(0)
    a = analysed(_randomise(Layer()), x=torch.randn(2, 3, 8))
    assert group_of(a, "n1.weight", 0) is not group_of(a, "a.weight", 0)
    assert verify_fails(a)


def test_group_norm_rule_without_blocks_is_caught(monkeypatch):
    def no_blocks(ctx: RuleContext) -> None:
        x, w, b = ctx.arg(0), ctx.arg(2), ctx.arg(3)
        ctx.same(x, ctx.out)
        ctx.tie(w[0], x[1])
        ctx.tie(b[0], x[1])  # wrong: channels would move across groups

    monkeypatch.setitem(graphperm.analysis.rules.RULES, "aten.group_norm", no_blocks)
    torch.manual_seed(0)
    a = analysed(_randomise(Channels(nn.GroupNorm(2, 8))), x=torch.randn(2, 4, 5))
    assert group_of(a, "n.weight", 0).structure == "8"
    assert verify_fails(a)
