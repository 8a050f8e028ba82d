"""Pointwise rules: broadcasting maps, bias adds, skip connections, unary maps and copies."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import Axes, analysed, assert_fixed_by, assert_verifies, group_of, node, nodes


class Broadcast(nn.Module):
    """x -> Linear -> (* scale[16]) (+ row[3, 1]) (* sigmoid gate[..., 1]) -> dropout -> to -> gelu
    -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.gate = nn.Linear(8, 1)
        self.b = nn.Linear(16, 8)
        self.scale = nn.Parameter(torch.randn(16))
        self.row = nn.Parameter(torch.randn(3, 1))

    def forward(self, x):
        h = self.a(x) * self.scale + self.row
        h = h * torch.sigmoid(self.gate(x))
        h = F.dropout(h, 0.1, training=self.training)
        h = h.to(torch.float64).to(torch.float32)
        return self.b(F.gelu(h))


class Skip(nn.Module):
    """A residual block: h + b(gelu(c(h))), read out by d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.c = nn.Linear(12, 16)
        self.b = nn.Linear(16, 12)
        self.d = nn.Linear(12, 4)

    def forward(self, x):
        h = self.a(x)
        h = h + self.b(F.gelu(self.c(h)))
        return self.d(h)


class Select(nn.Module):
    """where / masked_fill / clamp / pow with a model-input mask broadcast over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x, mask):
        h = self.a(x)
        h = torch.where(h > 0, h, 0.1 * h)
        h = h.masked_fill(mask, 0.0).clamp(-3.0, 3.0).pow(2)
        return self.b(h)


@functools.cache
def broadcast():
    torch.manual_seed(0)
    return analysed(Broadcast(), x=torch.randn(2, 3, 8))


@functools.cache
def skip():
    torch.manual_seed(0)
    return analysed(Skip(), x=torch.randn(2, 3, 8))


@functools.cache
def select():
    torch.manual_seed(0)
    return analysed(Select(), x=torch.randn(2, 3, 8), mask=torch.rand(2, 3, 1) > 0.5)


# ------------------------------------------------------------------------------ golden maps
def test_broadcast_ties_channels_from_the_right():
    a = broadcast()
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    mul = node(a, "mul")
    assert ax.arg(mul, 0, -1) == ax.arg(mul, 1, 0) == ax.out(mul, -1) == ch
    assert ax.p("scale", 0) == ch == ax.p("a.bias", 0) == ax.p("b.weight", 1)
    assert ax.movable(ch) and ax.size(ch) == 16
    # leading dims follow the input through the product
    assert [ax.out(mul, d) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]


def test_size_one_broadcast_axes_are_free_and_tie_nothing():
    a = broadcast()
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    row_add = node(a, "add")
    # row (3, 1): the 3 is the token axis, the 1 broadcasts over channels
    assert ax.p("row", 0) == ax.out(row_add, 1) == ax.v("x", 1)
    assert ax.size(ax.p("row", 1)) == 1 and ax.p("row", 1) != ch
    assert not ax.fixed(ax.p("row", 1))
    gate_mul = node(a, "mul", 1)
    assert ax.size(ax.arg(gate_mul, 1, -1)) == 1 and ax.arg(gate_mul, 1, -1) != ch
    assert ax.out(gate_mul, -1) == ch
    assert ax.size(ax.p("gate.weight", 0)) == 1


def test_bias_add_is_not_a_skip_connection():
    a = broadcast()
    ax = Axes(a)
    assert "skip" not in ax.tags(ax.p("a.weight", 0))
    assert group_of(a, "a.weight", 0).kind == "ffn"


def test_unary_maps_and_copies_keep_every_axis():
    a = broadcast()
    ax = Axes(a)
    for op, count in (("dropout", 1), ("to", 2), ("gelu", 1), ("sigmoid", 1)):
        assert len(nodes(a, op)) == count, op
        for n in nodes(a, op):
            assert [ax.arg(n, 0, d) for d in range(3)] == [ax.out(n, d) for d in range(3)], op
    assert ax.out(node(a, "gelu"), -1) == ax.p("b.weight", 1)


def test_skip_add_ties_both_branches_and_is_tagged():
    a = skip()
    ax = Axes(a)
    add = node(a, "add")
    ch = ax.out(add, -1)
    assert ax.arg(add, 0, -1) == ax.arg(add, 1, -1) == ch
    assert ch == ax.p("a.weight", 0) == ax.p("b.weight", 0) == ax.p("c.weight", 1)
    assert ch == ax.p("d.weight", 1)
    assert "skip" in ax.tags(ch)
    assert group_of(a, "a.weight", 0).kind == "residual"
    assert group_of(a, "c.weight", 0).kind == "ffn"
    assert group_of(a, "c.weight", 0) is not group_of(a, "a.weight", 0)


def test_where_and_masked_fill_broadcast_a_fixed_mask():
    a = select()
    ax = Axes(a)
    ch = ax.p("a.weight", 0)
    for op in ("where", "masked_fill", "clamp", "pow", "gt"):
        assert ax.out(node(a, op), -1) == ch, op
    # the mask is a model input: its token axis is fixed, its size-1 channel axis is not
    assert_fixed_by(ax, ax.v("mask", 1), "model input")
    assert ax.size(ax.v("mask", 2)) == 1
    assert ax.movable(ch)


# ------------------------------------------------------------------------------ semantics
def test_broadcast_semantics():
    a = broadcast()
    assert [g.structure for g in a.groups if ("a.weight", 0) in g.tensors] == ["16"]
    assert_verifies(a)


def test_skip_semantics():
    assert_verifies(skip())


def test_select_semantics():
    assert_verifies(select())


# ------------------------------------------------------------------ glu, multiply, skip detection
class Glu(nn.Module):
    """The conformer convolution module's gate: Linear(8 → 2·12) → glu over channels → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 24)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        return self.b(F.glu(self.a(x), dim=-1))


class Multiply(nn.Module):
    """``torch.multiply`` (ATen's alias of mul) of two linear outputs, as ConvBERT does."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.g = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        return self.b(torch.multiply(self.a(x), self.g(x)))


class GeluNewFfn(nn.Module):
    """A residual block whose FFN uses gelu_new (``x + 0.044715·x³`` inside) and a GRN-style
    ``γ·(h·N(h)) + β + h``: neither add is a skip connection; ``x + ffn(x)`` is."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.randn(16))
        self.beta = nn.Parameter(torch.randn(16))

    def forward(self, x):
        h = self.up(x)
        h = 0.5 * h * (1.0 + torch.tanh(0.79788456 * (h + 0.044715 * torch.pow(h, 3.0))))
        n = h.norm(dim=1, keepdim=True)
        h = self.gamma * (h * (n / (n.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta + h
        return x + self.down(h)


@functools.cache
def glu():
    torch.manual_seed(0)
    return analysed(Glu(), x=torch.randn(2, 3, 8))


@functools.cache
def multiply():
    torch.manual_seed(0)
    return analysed(Multiply(), x=torch.randn(2, 3, 8))


@functools.cache
def gelu_new_ffn():
    torch.manual_seed(0)
    return analysed(GeluNewFfn(), x=torch.randn(2, 5, 8))


def test_glu_splits_channels_in_two_halves_tied_to_the_output():
    a = glu()
    ax = Axes(a)
    n = node(a, "glu")
    flat = ax.arg(n, 0, 2)
    assert flat == ax.p("a.weight", 0) and ax.segments(flat) == [12, 12]
    first, second = ax.t.decomp(flat).segments
    assert first == second == ax.out(n, 2) == ax.p("b.weight", 1)
    assert ax.movable(first)
    assert not a.coupling.unknown


def test_multiply_is_pointwise():
    a = multiply()
    ax = Axes(a)
    n = node(a, "multiply")
    assert ax.arg(n, 0, 2) == ax.arg(n, 1, 2) == ax.out(n, 2) == ax.p("b.weight", 1)
    assert ax.movable(ax.out(n, 2)) and not a.coupling.unknown


def test_pointwise_add_of_one_value_is_not_a_skip_connection():
    a = gelu_new_ffn()
    kinds = {g.name: g.kind for g in a.groups}
    hidden = group_of(a, "up.weight", 0)
    assert hidden.kind == "ffn", kinds
    assert "skip" not in Axes(a).tags(Axes(a).p("up.weight", 0))
    assert "skip" in Axes(a).tags(Axes(a).p("down.weight", 0))


def test_glu_multiply_and_pointwise_adds_semantics():
    for analysis in (glu(), multiply(), gelu_new_ffn()):
        assert_verifies(analysis)


# ------------------------------------------------------------------ in-place detach (GPT-Neo)
class DetachInPlace(nn.Module):
    """``gelu(h).detach_()`` on an activation, and a constant made in ``forward`` (GPT-Neo's
    attention mask value: ``torch.tensor(...)``, exported as ``lift_fresh_copy`` then
    ``detach_``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        h = F.gelu(self.a(x)).detach_()
        low = torch.tensor(-1.0)
        return self.b(torch.where(h > 0, h, low))


@functools.cache
def detach_in_place():
    torch.manual_seed(0)
    return analysed(DetachInPlace(), x=torch.randn(2, 3, 8))


def test_in_place_detach_keeps_every_axis():
    a = detach_in_place()
    ax = Axes(a)
    assert len(nodes(a, "detach_")) == 2 and not a.coupling.unknown
    n = next(n for n in nodes(a, "detach_") if len(n.meta["val"].shape) == 3)
    assert [ax.arg(n, 0, d) for d in range(3)] == [ax.out(n, d) for d in range(3)]
    assert ax.out(n, -1) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(ax.out(n, -1))


def test_in_place_detach_semantics():
    a = detach_in_place()
    assert group_of(a, "a.weight", 0).kind == "ffn"
    assert_verifies(a)


# ------------------------------------------------------------------ copy_ (Longformer)
class CopyInto(nn.Module):
    """``buf[:, :3] = h`` style writes: ``copy_`` of an activation into a fresh buffer
    (broadcasting a (1, 12) row over tokens in the second write)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.row = nn.Parameter(torch.randn(1, 12))
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        h = F.gelu(self.a(x))
        buf = torch.empty_like(h)
        buf.copy_(h)
        other = torch.empty_like(h).copy_(self.row)
        return self.b(buf * other)


@functools.cache
def copy_into():
    torch.manual_seed(0)
    return analysed(CopyInto(), x=torch.randn(5, 8))


def test_copy_ties_destination_source_and_result():
    a = copy_into()
    ax = Axes(a)
    first, second = nodes(a, "copy_")
    ch = ax.p("a.weight", 0)
    assert ax.arg(first, 0, -1) == ax.arg(first, 1, -1) == ax.out(first, -1) == ch
    assert ax.arg(second, 1, -1) == ax.p("row", 1) == ch == ax.p("b.weight", 1)
    assert ax.size(ax.p("row", 0)) == 1 and not a.coupling.unknown


def test_copy_semantics():
    assert_verifies(copy_into())
