"""Contraction rules: linear layers, products with a weight, products of two activations
(eager attention: q @ k^T, p @ v), bmm and einsum."""

from __future__ import annotations

import functools

import torch
from torch import nn

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)
        self.w = nn.Parameter(torch.randn(4, 6) / 2)
        self.w2 = nn.Parameter(torch.randn(6, 5) / 2)
        self.bias = nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = self.b(torch.relu(self.a(x)))
        h = torch.matmul(h, self.w)  # a product with a saved weight (in, out)
        return torch.addmm(self.bias, h.reshape(6, 6), self.w2)


class Transposed(nn.Module):
    """Weights used through a transpose (``x @ W.t()``) and from the left (``W @ h``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(16, 8) / 3)
        self.b = nn.Parameter(torch.randn(4, 16) / 4)

    def forward(self, x):
        h = torch.relu(x @ self.a.t())  # (2, 3, 16)
        return self.b @ h.transpose(1, 2)  # (2, 4, 3)


class EagerAttention(nn.Module):
    """Multi-head attention written with matmul / bmm / einsum (4 heads of 4 channels)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
        self.o = nn.Linear(16, 8)
        self.mode = mode

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, 4, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.mode == "matmul":
            o = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        elif self.mode == "bmm":
            q, k, v = (y.reshape(b * 4, t, 4) for y in (q, k, v))
            p = torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1)
            o = torch.bmm(p, v).view(b, 4, t, 4)
        else:
            p = torch.einsum("bhqd,bhkd->bhqk", q, k).softmax(-1)
            o = torch.einsum("bhqk,bhkd->bhqd", p, v)
        return self.o(o.transpose(1, 2).reshape(b, t, 16))


class Diagonal(nn.Module):
    """einsum with a repeated letter takes a diagonal: that axis may not move."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 6)
        self.b = nn.Linear(6, 8)
        self.c = nn.Linear(8, 5)
        self.w = nn.Parameter(torch.randn(5, 6))

    def forward(self, x):
        h = self.a(x)
        outer = torch.einsum("bti,btj->btij", h, h)
        diag = torch.einsum("btii->bti", outer)
        y = torch.einsum("bti,oi->bto", self.c(x), self.w.t())  # contraction with a weight
        return self.b(diag), y


@functools.cache
def mlp():
    torch.manual_seed(0)
    return analysed(Mlp(), x=torch.randn(2, 3, 8))


@functools.cache
def transposed():
    torch.manual_seed(0)
    return analysed(Transposed(), x=torch.randn(2, 3, 8))


@functools.cache
def attention(mode: str):
    torch.manual_seed(0)
    return analysed(EagerAttention(mode), x=torch.randn(2, 3, 8))


@functools.cache
def diagonal():
    torch.manual_seed(0)
    return analysed(Diagonal(), x=torch.randn(2, 3, 8))


# ------------------------------------------------------------------------------ golden maps
def test_linear_ties_features_to_the_weight():
    a = mlp()
    ax = Axes(a)
    lin = node(a, "linear")
    hidden = ax.out(lin, -1)
    assert hidden == ax.p("a.weight", 0) == ax.p("a.bias", 0)
    assert ax.arg(lin, 0, -1) == ax.p("a.weight", 1) == ax.v("x", 2)
    assert [ax.out(lin, d) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]
    assert "linear_out" in ax.tags(hidden) and "linear_in" in ax.tags(ax.v("x", 2))
    assert hidden == ax.p("b.weight", 1) and "linear_in" in ax.tags(hidden)
    assert ax.movable(hidden)
    assert_fixed_by(ax, ax.p("a.weight", 1), "model input")
    assert group_of(a, "a.weight", 0).kind == "ffn"
    assert group_of(a, "a.weight", 0).structure == "16"


def test_matmul_and_addmm_with_a_weight():
    a = mlp()
    ax = Axes(a)
    mm = node(a, "matmul")
    four = ax.p("b.weight", 0)
    assert ax.arg(mm, 0, -1) == ax.p("w", 0) == four
    assert ax.out(mm, -1) == ax.p("w", 1)
    assert "linear_in" in ax.tags(four) and "linear_out" in ax.tags(ax.p("w", 1))
    assert not {"qk", "vo", "heads"} & (ax.tags(four) | ax.tags(ax.p("w", 1)))
    addmm = node(a, "addmm")
    assert ax.arg(addmm, 1, 1) == ax.p("w2", 0) == ax.p("w", 1)
    assert ax.out(addmm, 1) == ax.p("bias", 0) == ax.p("w2", 1)
    assert "linear_out" in ax.tags(ax.p("w2", 1)) and "qk" not in ax.tags(ax.p("w2", 0))
    assert ax.factors(ax.out(addmm, 0)) == [2, 3] and not ax.movable(ax.out(addmm, 0))
    assert ax.movable(ax.p("w", 1)) and ax.movable(ax.p("w2", 1))


def test_transposed_and_left_weights_are_linear_not_attention():
    a = transposed()
    ax = Axes(a)
    first, second = node(a, "matmul"), node(a, "matmul", 1)
    hidden = ax.out(first, -1)
    assert hidden == ax.p("a", 0) == ax.p("b", 1) == ax.arg(second, 1, 1)
    assert ax.arg(first, 0, -1) == ax.p("a", 1) == ax.v("x", 2)
    assert "linear_in" in ax.tags(ax.v("x", 2))
    assert {"linear_out", "linear_in"} <= ax.tags(hidden)
    out = ax.out(second, 1)  # W @ h: the weight's rows are the output features
    assert out == ax.p("b", 0) and "linear_out" in ax.tags(out)
    assert ax.out(second, 2) == ax.v("x", 1) and "linear_out" not in ax.tags(ax.v("x", 1))
    for c in (hidden, out, ax.v("x", 2)):
        assert not {"qk", "vo", "heads"} & ax.tags(c)
    assert group_of(a, "a", 0).kind == "ffn" and group_of(a, "a", 0).structure == "16"


def test_products_of_activations_are_attention():
    a = attention("matmul")
    ax = Axes(a)
    scores, mixed = node(a, "matmul"), node(a, "matmul", 1)
    heads, qk = ax.out(node(a, "view"), 2), ax.out(node(a, "view"), 3)
    vo = ax.out(node(a, "view", 2), 3)
    assert ax.arg(scores, 0, -1) == ax.arg(scores, 1, -2) == qk
    assert ax.out(scores, 1) == ax.arg(scores, 0, 1) == ax.arg(scores, 1, 1) == heads
    assert ax.out(mixed, -1) == ax.arg(mixed, 1, -1) == vo
    assert {"qk"} <= ax.tags(qk) and {"vo"} <= ax.tags(vo) and {"heads"} <= ax.tags(heads)
    assert ax.t.factors(ax.p("q.weight", 0)) == ax.t.factors(ax.p("k.weight", 0)) == [heads, qk]
    assert ax.t.factors(ax.p("v.weight", 0)) == ax.t.factors(ax.p("o.weight", 1)) == [heads, vo]
    assert a.deps == {qk: heads, vo: heads}
    g = group_of(a, "q.weight", 0)
    assert g.kind == "attn" and g.structure == "4 heads × (qk 4, vo 4)"
    assert g is group_of(a, "o.weight", 1)
    assert {p.name: p.outer for p in g.parts} == {"heads": None, "qk": "heads", "vo": "heads"}


def test_bmm_attention_over_merged_batch_and_heads():
    a = attention("bmm")
    ax = Axes(a)
    bmm = node(a, "bmm")
    heads = ax.out(node(a, "view"), 2)
    assert ax.t.factors(ax.out(bmm, 0)) == [ax.v("x", 0), heads]
    assert "heads" in ax.tags(ax.out(bmm, 0))
    assert ax.arg(bmm, 0, -1) == ax.arg(bmm, 1, 1) == ax.out(node(a, "view"), 3)
    assert group_of(a, "q.weight", 0).structure == "4 heads × (qk 4, vo 4)"


def test_einsum_ties_each_letter():
    a = attention("einsum")
    ax = Axes(a)
    scores, mixed = node(a, "einsum"), node(a, "einsum", 1)
    q, k, v = (node(a, "transpose", i) for i in range(3))
    assert [ax.out(scores, d) for d in (0, 1)] == [ax.out(q, 0), ax.out(q, 1)]
    assert ax.out(q, 3) == ax.out(k, 3)  # d is contracted
    assert ax.out(mixed, 3) == ax.out(v, 3)
    assert ax.out(q, 1) == ax.out(k, 1) == ax.out(v, 1) == ax.out(mixed, 1)
    g = group_of(a, "q.weight", 0)
    assert g is group_of(a, "o.weight", 1)
    assert sorted(p.size for p in g.parts) == [4, 4, 4]


def test_einsum_diagonal_is_fixed_and_weights_contract():
    a = diagonal()
    ax = Axes(a)
    assert_fixed_by(ax, ax.p("a.weight", 0), "diagonal")
    assert ax.p("c.weight", 0) == ax.p("w", 0)
    assert ax.movable(ax.p("w", 0))


# ------------------------------------------------------------------------------ semantics
def test_linear_semantics():
    assert_verifies(mlp())
    assert_verifies(transposed())


def test_attention_semantics():
    for mode in ("matmul", "bmm", "einsum"):
        assert_verifies(attention(mode))


def test_diagonal_semantics():
    assert_verifies(diagonal())


class EinsumAttention(nn.Module):
    """Funnel's attention: scores and context as einsums over (batch, pos, head, dim) tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(8, 12)
        self.o = nn.Linear(12, 8)

    def forward(self, x):
        b, n = x.shape[:2]
        q, k, v = (f(x).view(b, n, 3, 4) for f in (self.q, self.k, self.v))
        probs = torch.einsum("bind,bjnd->bnij", q, k).softmax(-1)
        return self.o(torch.einsum("bnij,bjnd->bind", probs, v).reshape(b, n, 12))


@functools.cache
def einsum_attention():
    torch.manual_seed(0)
    return analysed(EinsumAttention(), x=torch.randn(2, 5, 8))


def test_einsum_of_two_activations_is_attention():
    a = einsum_attention()
    g = group_of(a, "q.weight", 0)
    assert g is group_of(a, "v.weight", 0) and g.kind == "attn"
    assert g.structure == "3 heads × (qk 4, vo 4)"
    assert {p.name: p.outer for p in g.parts} == {"heads": None, "qk": "heads", "vo": "heads"}


def test_einsum_attention_semantics():
    assert_verifies(einsum_attention())


# ------------------------------------------------------ weights picked by index (MoE experts)
class PickedExperts(nn.Module):
    """A mixture of experts as transformers' ``batched_mm`` runs it: each token's expert weight
    ``W[expert_ids]`` (3 experts of Linear(8 → 6)), a batched product, then a shared Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.randn(3, 6, 8))
        self.out = nn.Linear(6, 4)

    def forward(self, x, expert_ids):
        picked = self.experts[expert_ids]  # (tokens, 6, 8)
        h = torch.bmm(picked, x.unsqueeze(-1)).squeeze(-1)
        return self.out(torch.relu(h))


@functools.cache
def picked_experts():
    torch.manual_seed(0)
    return analysed(PickedExperts(), x=torch.randn(5, 8), expert_ids=torch.tensor([0, 2, 1, 2, 0]))


def test_a_picked_weight_is_a_weight_in_a_product():
    a = picked_experts()
    ax = Axes(a)
    bmm = node(a, "bmm")
    units = ax.out(bmm, 1)
    assert units == ax.p("experts", 1) == ax.p("out.weight", 1)
    assert "linear_out" in ax.tags(units) and "vo" not in ax.tags(units)
    assert "linear_in" in ax.tags(ax.p("experts", 2)) and "qk" not in ax.tags(ax.p("experts", 2))
    assert_fixed_by(ax, ax.p("experts", 0), "indexed")  # the experts' order


def test_a_picked_weight_semantics():
    a = picked_experts()
    assert group_of(a, "experts", 1).kind == "ffn"
    assert_verifies(a)


def _weight_in(a, state_key: str) -> set[int]:
    """The dims of saved tensor ``state_key`` that the rules tagged ``weight_in``."""
    c = a.coupling
    key = next(k for k, v in c.state.items() if v == state_key)
    return {d for (k, d, v), tags in c.axis_tags.items() if k == key and "weight_in" in tags}


def test_weight_in_marks_the_axis_of_a_weight_that_reads_features():
    """What a ZipIt! unmerge acts on (graphperm.apply.zip): a linear weight's input axis, a
    weight read through a transpose or from the left, a matmul's and addmm's (in, out) weight."""
    a = mlp()
    assert _weight_in(a, "a.weight") == {1} and _weight_in(a, "b.weight") == {1}
    assert _weight_in(a, "w") == {0} and _weight_in(a, "w2") == {0}
    assert _weight_in(a, "a.bias") == set()
    t = transposed()
    assert _weight_in(t, "a") == {1}  # x @ a.t(): a is (out, in)
    assert _weight_in(t, "b") == {1}  # b @ h: b's columns read h
