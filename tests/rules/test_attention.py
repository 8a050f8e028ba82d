"""Attention rules: scaled_dot_product_attention (heads × (qk, vo), masks, causal) and softmax."""

from __future__ import annotations

import functools

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

HEADS, DIM = 4, 4


def _split(h: torch.Tensor) -> torch.Tensor:
    b, t, _ = h.shape
    return h.view(b, t, HEADS, DIM).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention through sdpa, with a model-input mask and a learned per-head bias."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
        self.o = nn.Linear(16, 8)
        self.bias = nn.Parameter(torch.randn(HEADS, 1, 3))  # per head and key position

    def forward(self, x, mask):
        b, t, _ = x.shape
        q, k, v = _split(self.q(x)), _split(self.k(x)), _split(self.v(x))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask + self.bias)
        return self.o(o.transpose(1, 2).reshape(b, t, 16))


class Latents(nn.Module):
    """Learned queries attend to the input (Perceiver style): the query axis is a weight axis."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(5, 16))
        self.k, self.v, self.o = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        self.causal = causal

    def forward(self, x):
        b = x.shape[0]
        q = _split(self.latents.expand(b, 5, 16))
        o = F.scaled_dot_product_attention(
            q, _split(self.k(x)), _split(self.v(x)), is_causal=self.causal
        )
        return self.o(o.transpose(1, 2).reshape(b, 5, 16))


class Softmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.softmax(h, -1) + torch.log_softmax(h, 1))


@functools.cache
def attention():
    torch.manual_seed(0)
    return analysed(Attention(), x=torch.randn(2, 3, 8), mask=torch.randn(2, 1, 3, 3))


@functools.cache
def latents(causal: bool):
    torch.manual_seed(0)
    return analysed(Latents(causal), x=torch.randn(2, 5, 8))


@functools.cache
def softmax():
    torch.manual_seed(0)
    return analysed(Softmax(), x=torch.randn(2, 3, 8))


# ------------------------------------------------------------------------------ golden maps
def test_sdpa_heads_qk_vo():
    a = attention()
    ax = Axes(a)
    sdpa = node(a, "scaled_dot_product_attention")
    q, k, v = (lambda d, i=i: ax.arg(sdpa, i, d) for i in range(3))
    heads, qk, vo = q(1), q(3), v(3)
    assert k(1) == v(1) == ax.out(sdpa, 1) == heads
    assert k(3) == qk and ax.out(sdpa, 3) == vo and qk != vo
    assert q(2) == ax.out(sdpa, 2) == ax.v("x", 1)
    assert k(2) == v(2) == ax.v("x", 1)  # one input: keys are the same tokens
    assert "heads" in ax.tags(heads) and "qk" in ax.tags(qk) and "vo" in ax.tags(vo)
    assert ax.t.factors(ax.p("q.weight", 0)) == ax.t.factors(ax.p("k.weight", 0)) == [heads, qk]
    assert ax.t.factors(ax.p("v.weight", 0)) == ax.t.factors(ax.p("o.weight", 1)) == [heads, vo]
    assert a.deps == {qk: heads, vo: heads}


def test_sdpa_mask_follows_heads_and_tokens():
    a = attention()
    ax = Axes(a)
    sdpa = node(a, "scaled_dot_product_attention")
    heads = ax.out(sdpa, 1)
    mask = sdpa.args[3].name
    assert ax.v(mask, 1) == heads == ax.p("bias", 0)  # the learned bias moves with its head
    assert ax.v(mask, 2) == ax.v("x", 1) and ax.v(mask, 3) == ax.v("x", 1)
    assert ax.size(ax.v("mask", 1)) == 1 and not ax.fixed(ax.v("mask", 1))
    assert_fixed_by(ax, ax.v("mask", 2), "model input")
    g = group_of(a, "q.weight", 0)
    assert g.kind == "attn" and g.structure == "4 heads × (qk 4, vo 4)"
    assert g is group_of(a, "bias", 0) is group_of(a, "o.weight", 1)
    assert {p.name: (p.size, p.outer) for p in g.parts} == {
        "heads": (4, None),
        "qk": (4, "heads"),
        "vo": (4, "heads"),
    }


def test_sdpa_query_axis_moves_unless_causal():
    free = latents(False)
    ax = Axes(free)
    sdpa = node(free, "scaled_dot_product_attention")
    assert ax.arg(sdpa, 0, 2) == ax.out(sdpa, 2) == ax.p("latents", 0)
    assert ax.movable(ax.p("latents", 0)) and group_of(free, "latents", 0) is not None
    assert ax.arg(sdpa, 1, 2) == ax.arg(sdpa, 2, 2) == ax.v("x", 1)

    causal = latents(True)
    ax = Axes(causal)
    assert_fixed_by(ax, ax.p("latents", 0), "causal")
    assert group_of(causal, "latents", 0) is None
    assert group_of(causal, "latents", 1).structure == "4 heads × (qk 4, vo 4)"


def test_softmax_keeps_every_axis():
    a = softmax()
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    for op in ("softmax", "log_softmax"):
        n = node(a, op)
        assert [ax.arg(n, 0, d) for d in range(3)] == [ax.out(n, d) for d in range(3)]
        assert ax.out(n, 2) == ch
    assert ax.movable(ch) and ch == ax.p("b.weight", 1)


# ------------------------------------------------------------------------------ semantics
def test_attention_semantics():
    a = attention()
    g = group_of(a, "q.weight", 0)
    # qk and vo are drawn per head: one row of channel order for each (new) head
    assert Indexer(a).shapes()[g.name] == {"heads": (4,), "qk": (4, 4), "vo": (4, 4)}
    assert_verifies(a)


def test_latent_attention_semantics():
    assert_verifies(latents(False))
    assert_verifies(latents(True))


def test_softmax_semantics():
    assert_verifies(softmax())


def test_sdpa_rule_that_unties_q_and_k_is_caught(monkeypatch):
    sdpa = graphperm.analysis.rules.RULES["aten.scaled_dot_product_attention"]

    def untied(ctx: RuleContext) -> None:
        q, k = ctx.arg(0), ctx.arg(1)

        class Loose:  # the real rule, except that q and k channels are never tied
            def __getattr__(self, name):
                return getattr(ctx, name)

            def tie(self, a, b, *, tag=None):
                if {a.tensor.key, b.tensor.key} == {q.key, k.key}:
                    ctx.reduce(a, b)
                else:
                    ctx.tie(a, b, tag=tag)

        sdpa(Loose())

    monkeypatch.setitem(graphperm.analysis.rules.RULES, "aten.scaled_dot_product_attention", untied)
    torch.manual_seed(0)
    a = analysed(Attention(), x=torch.randn(2, 3, 8), mask=torch.randn(2, 1, 3, 3))
    ax = Axes(a)
    assert ax.t.factors(ax.p("q.weight", 0)) != ax.t.factors(ax.p("k.weight", 0))
    assert verify_fails(a)
