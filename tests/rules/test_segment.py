"""Segment rules: cat / chunk / split (segments), slice / select / pad (blocked), lookups
(embedding, index_select, gather), repeat, stack."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from graphperm.apply import verify
from graphperm.apply.verify import random_rotations

from .helpers import SEEDS, Axes, analysed, assert_fixed_by, assert_verifies, group_of, node


class Between(nn.Module):
    """x -> Linear(8, n) -> f -> Linear(m, 4); ``idx`` is a saved index buffer."""

    def __init__(self, f, n: int = 12, m: int = 12) -> None:
        super().__init__()
        self.a = nn.Linear(8, n)
        self.b = nn.Linear(m, 4)
        self.f = f
        self.register_buffer("idx", torch.tensor([2, 0, 1, 1]))

    def forward(self, x):
        return self.b(self.f(self, self.a(x)))


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.a2 = nn.Linear(8, 4), nn.Linear(8, 6)
        self.b = nn.Linear(10, 8)

    def forward(self, x):
        return self.b(torch.cat([self.a(x), self.a2(x)], -1))


class FusedQkv(nn.Module):
    """One Linear makes q, k and v; chunk cuts them apart (4 heads of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 48)
        self.o = nn.Linear(16, 8)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (y.view(b, t, 4, 4).transpose(1, 2) for y in self.qkv(x).chunk(3, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(b, t, 16))


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(10, 6)
        self.b = nn.Linear(6, 4)

    def forward(self, ids):
        return self.b(self.e(ids))


CASES = {  # name -> (f(self, h) on h of shape (2, 3, 12), n, m)
    "split": (lambda s, h: torch.cat(h.split([5, 7], -1)[::-1], -1), 12, 12),
    "slice_part": (lambda s, h: h[..., 2:10], 12, 8),
    "slice_full": (lambda s, h: torch.ops.aten.slice.Tensor(h, 2, 0, 12), 12, 12),
    "slice_tokens": (lambda s, h: h[:, 1:], 12, 12),
    "select": (lambda s, h: h[:, 1], 12, 12),
    "pad_channels": (lambda s, h: F.pad(h, (1, 1)), 12, 14),
    "pad_tokens": (lambda s, h: F.pad(h, (0, 0, 1, 1)), 12, 12),
    "index_select_tokens": (lambda s, h: h.index_select(1, s.idx), 12, 12),
    "index_select_channels": (lambda s, h: h.index_select(2, s.idx), 12, 4),
    "gather": (lambda s, h: h.gather(1, s.idx.view(1, 4, 1).expand(2, 4, 12)), 12, 12),
    "repeat_tokens": (lambda s, h: h.repeat(1, 2, 1), 12, 12),
    "repeat_channels": (lambda s, h: h.repeat(1, 1, 2), 12, 24),
    # ViTMAE: an index of shape (B, L, 1) repeated over the channels is a broadcast
    "gather_repeated_index": (
        lambda s, h: h.gather(1, s.idx.view(1, 4, 1).repeat(2, 1, 12)),
        12,
        12,
    ),
    "repeat_interleave_tokens": (lambda s, h: h.repeat_interleave(2, dim=1), 12, 12),
    "repeat_interleave_channels": (lambda s, h: h.repeat_interleave(2, dim=2), 12, 24),
    "stack": (lambda s, h: torch.stack([h, 2 * h], 1).amax(1), 12, 12),
    "unbind": (lambda s, h: sum(h.unbind(1)), 12, 12),
}


@functools.cache
def between(name: str):
    torch.manual_seed(0)
    f, n, m = CASES[name]
    return analysed(Between(f, n, m), x=torch.randn(2, 3, 8))


@functools.cache
def cat():
    torch.manual_seed(0)
    return analysed(Cat(), x=torch.randn(2, 3, 8))


@functools.cache
def fused():
    torch.manual_seed(0)
    return analysed(FusedQkv(), x=torch.randn(2, 3, 8))


@functools.cache
def embed():
    torch.manual_seed(0)
    return analysed(Embed(), ids=torch.randint(0, 10, (2, 3)))


# ------------------------------------------------------------------------------ golden maps
def test_cat_along_channels_makes_segments():
    a = cat()
    ax = Axes(a)
    c = node(a, "cat")
    flat = ax.out(c, 2)
    assert ax.segments(flat) == [4, 6]
    assert list(ax.t.decomp(flat).segments) == [ax.p("a.weight", 0), ax.p("a2.weight", 0)]
    assert ax.p("b.weight", 1) == flat
    for part in (*c.args[0], c):
        assert [ax.v(part, d) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]
    g = group_of(a, "b.weight", 1)
    assert g is group_of(a, "a.weight", 0) is group_of(a, "a2.weight", 0)
    assert sorted(p.size for p in g.parts) == [4, 6]


def test_split_then_cat_in_another_order():
    a = between("split")
    ax = Axes(a)
    split = node(a, "split_with_sizes")
    five, seven = ax.out(split, 2, 0), ax.out(split, 2, 1)
    assert ax.segments(ax.p("a.weight", 0)) == [5, 7]
    assert list(ax.t.decomp(ax.p("a.weight", 0)).segments) == [five, seven]
    assert list(ax.t.decomp(ax.p("b.weight", 1)).segments) == [seven, five]
    assert ax.out(node(a, "getitem", 1), 2) == seven


def test_chunked_fused_qkv_keeps_heads_qk_vo():
    a = fused()
    ax = Axes(a)
    chunk = node(a, "chunk")
    qkv = ax.p("qkv.weight", 0)
    assert ax.segments(qkv) == [16, 16, 16]
    q, k, v = (ax.out(chunk, 2, i) for i in range(3))
    assert list(ax.t.decomp(qkv).segments) == [q, k, v]
    heads, qk = ax.t.factors(q)
    assert ax.t.factors(k) == [heads, qk]
    assert ax.t.factors(v)[0] == heads and ax.t.factors(v)[1] != qk
    assert ax.t.factors(ax.p("o.weight", 1)) == ax.t.factors(v)
    g = group_of(a, "qkv.weight", 0)
    assert g.kind == "attn" and g.structure == "4 heads × (qk 4, vo 4)"
    assert g is group_of(a, "o.weight", 1)


def test_partial_slice_is_blocked_full_slice_is_tied():
    part = between("slice_part")
    ax = Axes(part)
    s = node(part, "slice")
    assert_fixed_by(ax, ax.arg(s, 0, 2), "aten.slice", "takes part")
    assert_fixed_by(ax, ax.out(s, 2), "aten.slice")
    assert [ax.out(s, d) for d in (0, 1)] == [ax.v("x", 0), ax.v("x", 1)]
    assert group_of(part, "a.weight", 0) is None and group_of(part, "b.weight", 1) is None

    full = between("slice_full")
    ax = Axes(full)
    s = node(full, "slice")
    assert ax.arg(s, 0, 2) == ax.out(s, 2) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(ax.out(s, 2))

    tokens = between("slice_tokens")
    ax = Axes(tokens)
    s = node(tokens, "slice")
    assert ax.out(s, 2) == ax.p("a.weight", 0) and ax.movable(ax.out(s, 2))
    assert_fixed_by(ax, ax.out(s, 1), "takes part")


def test_select_blocks_its_dim_and_passes_the_others():
    a = between("select")
    ax = Axes(a)
    s = node(a, "select")
    assert_fixed_by(ax, ax.arg(s, 0, 1), "select")
    assert [ax.out(s, 0), ax.out(s, 1)] == [ax.v("x", 0), ax.p("a.weight", 0)]
    assert ax.movable(ax.p("a.weight", 0))


def test_pad_blocks_the_padded_dim():
    a = between("pad_channels")
    ax = Axes(a)
    p = node(a, "pad")
    assert_fixed_by(ax, ax.arg(p, 0, 2), "pads it")
    assert_fixed_by(ax, ax.out(p, 2), "pads it")
    assert group_of(a, "a.weight", 0) is None

    a = between("pad_tokens")
    ax = Axes(a)
    p = node(a, "pad")
    assert ax.out(p, 2) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert ax.movable(ax.out(p, 2))
    assert_fixed_by(ax, ax.out(p, 1), "pads it")


def test_embedding_fixes_the_vocabulary_and_ties_the_features():
    a = embed()
    ax = Axes(a)
    e = node(a, "embedding")
    assert_fixed_by(ax, ax.p("e.weight", 0), "looked up")
    feat = ax.out(e, 2)
    assert feat == ax.p("e.weight", 1) == ax.p("b.weight", 1)
    assert "linear_out" in ax.tags(feat) and ax.movable(feat)
    assert [ax.out(e, 0), ax.out(e, 1)] == [ax.v("ids", 0), ax.v("ids", 1)]
    assert group_of(a, "e.weight", 1).structure == "6"


def test_index_select_and_gather():
    a = between("index_select_tokens")
    ax = Axes(a)
    n = node(a, "index_select")
    assert_fixed_by(ax, ax.arg(n, 0, 1), "index_select")
    assert ax.out(n, 1) == ax.p("idx", 0)  # the index order is the output order
    assert ax.out(n, 2) == ax.p("a.weight", 0) and ax.movable(ax.out(n, 2))

    a = between("index_select_channels")
    ax = Axes(a)
    n = node(a, "index_select")
    assert_fixed_by(ax, ax.p("a.weight", 0), "index_select")
    assert ax.p("idx", 0) == ax.out(n, 2) == ax.p("b.weight", 1)

    a = between("gather")
    ax = Axes(a)
    n = node(a, "gather")
    assert_fixed_by(ax, ax.arg(n, 0, 1), "gather")
    assert [ax.arg(n, 2, d) for d in range(3)] == [ax.out(n, d) for d in range(3)]
    assert ax.out(n, 2) == ax.p("a.weight", 0) and ax.movable(ax.out(n, 2))


def test_repeat_lays_copies_end_to_end():
    a = between("repeat_tokens")
    ax = Axes(a)
    n = node(a, "repeat")
    assert ax.factors(ax.out(n, 1)) == [2, 3]
    _copies, tokens = ax.t.factors(ax.out(n, 1))
    assert tokens == ax.v("x", 1) and ax.fixed(tokens)
    assert ax.out(n, 2) == ax.p("a.weight", 0) and ax.movable(ax.out(n, 2))

    a = between("repeat_channels")
    ax = Axes(a)
    n = node(a, "repeat")
    assert ax.out(n, 2) == ax.p("b.weight", 1) and ax.factors(ax.out(n, 2)) == [2, 12]
    assert ax.t.factors(ax.out(n, 2))[1] == ax.p("a.weight", 0)
    assert ax.movable(ax.p("a.weight", 0)) and not a.coupling.unknown


def test_repeat_of_a_size_one_axis_is_a_broadcast():
    a = between("gather_repeated_index")
    ax = Axes(a)
    n = node(a, "repeat")
    assert not ax.fixed(ax.out(n, 2))
    assert ax.p("a.weight", 0) == ax.out(node(a, "gather"), 2) == ax.p("b.weight", 1)
    assert ax.movable(ax.p("a.weight", 0))


def test_repeat_interleave_repeats_each_element_in_place():
    a = between("repeat_interleave_tokens")
    ax = Axes(a)
    n = node(a, "repeat_interleave")
    assert ax.factors(ax.out(n, 1)) == [3, 2] and ax.t.factors(ax.out(n, 1))[0] == ax.v("x", 1)
    assert ax.out(n, 2) == ax.p("a.weight", 0) and ax.movable(ax.out(n, 2))
    assert not a.coupling.unknown

    a = between("repeat_interleave_channels")
    ax = Axes(a)
    n = node(a, "repeat_interleave")
    assert ax.out(n, 2) == ax.p("b.weight", 1) and ax.factors(ax.out(n, 2)) == [12, 2]
    assert ax.t.factors(ax.out(n, 2))[0] == ax.p("a.weight", 0)
    assert ax.movable(ax.p("a.weight", 0))


def test_stack_and_unbind_block_the_new_axis():
    a = between("stack")
    ax = Axes(a)
    n = node(a, "stack")
    ch = ax.p("a.weight", 0)
    assert_fixed_by(ax, ax.out(n, 1), "stack")
    assert [ax.out(n, d) for d in (0, 2, 3)] == [ax.v("x", 0), ax.v("x", 1), ch]
    assert ax.movable(ch) and ch == ax.p("b.weight", 1)

    a = between("unbind")
    ax = Axes(a)
    n = node(a, "unbind")
    ch = ax.p("a.weight", 0)
    assert_fixed_by(ax, ax.arg(n, 0, 1), "unbind")
    for i in range(3):
        assert [ax.out(n, d, i) for d in (0, 1)] == [ax.v("x", 0), ch]
    assert ax.movable(ch) and ch == ax.p("b.weight", 1)


# ------------------------------------------------------------------------------ semantics
def test_segment_semantics():
    for analysis in (cat(), fused(), embed()):
        assert_verifies(analysis)


def test_between_semantics():
    for name in CASES:
        assert_verifies(between(name))


# ------------------------------------------------------------------------------ index_put
class IndexPut(nn.Module):
    """x -> Linear(8, 12) -> write values at indexed positions -> Linear(12, 4)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 12), nn.Linear(12, 4)
        self.embed = nn.Parameter(torch.randn(12))  # HuBERT's masked_spec_embed
        self.rows = nn.Parameter(torch.randn(2, 12))
        self.scalar = nn.Parameter(torch.randn(1))
        self.register_buffer("bi", torch.tensor([0, 1]))
        self.register_buffer("ti", torch.tensor([2, 0]))
        self.how = how

    def forward(self, x, mask):
        h = self.a(x)
        if self.how == "mask":  # HuBERT: hidden[mask] = masked_spec_embed (in place)
            h[mask] = self.embed
        elif self.how == "rows":  # integer indices on two dims, one row of values each, added
            h = h.index_put((self.bi, self.ti), self.rows, accumulate=True)
        else:  # one value broadcast over the channels
            h[mask] = self.scalar
        return self.b(h)


@functools.cache
def index_put(how: str):
    torch.manual_seed(0)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    return analysed(IndexPut(how), x=torch.randn(2, 3, 8), mask=mask)


def _channel_symmetry(a):
    g = group_of(a, "a.weight", 0)
    (part,) = g.parts
    return a.symmetry(g.name, part.name)


def test_index_put_writes_by_mask_and_ties_the_channels():
    a = index_put("mask")
    ax = Axes(a)
    n = node(a, "index_put_")
    ch = ax.out(n, 2)
    assert ch == ax.arg(n, 0, 2) == ax.p("a.weight", 0) == ax.p("embed", 0) == ax.p("b.weight", 1)
    assert ax.movable(ch) and not a.coupling.unknown
    for d in (0, 1):  # batch and time: the mask picks positions along them
        assert_fixed_by(ax, ax.out(n, d), "index_put_", "writes at positions")
        assert_fixed_by(ax, ax.v("mask", d), "index_put_")
    g = group_of(a, "embed", 0)
    assert g is group_of(a, "a.weight", 0) is group_of(a, "b.weight", 1)
    assert g.structure == "12"
    s = _channel_symmetry(a)
    assert s.family == "orth" and not s.keeps_ones  # rows are kept or replaced whole

    a = index_put("rows")
    ax = Axes(a)
    n = node(a, "index_put")
    assert ax.out(n, 2) == ax.p("rows", 1) == ax.p("a.weight", 0) == ax.p("b.weight", 1)
    assert_fixed_by(ax, ax.p("rows", 0), "writes these values")
    assert_fixed_by(ax, ax.out(n, 0), "writes at positions")
    assert ax.movable(ax.out(n, 2))
    assert _channel_symmetry(a).family == "orth"

    a = index_put("broadcast")
    ax = Axes(a)
    assert ax.out(node(a, "index_put_"), 2) == ax.p("a.weight", 0) and ax.movable(
        ax.p("b.weight", 1)
    )
    s = _channel_symmetry(a)  # a constant written on every channel: only the all-ones direction
    assert s.family == "orth" and s.keeps_ones


def test_index_put_semantics():
    for how in ("mask", "rows", "broadcast"):
        a = index_put(how)
        assert_verifies(a)  # permutations
        g = group_of(a, "a.weight", 0)
        assert (g.name, g.parts[0].name) in random_rotations(a)  # the written channels rotate
        for seed in SEEDS:  # random orthogonal matrices on every orth part
            report = verify(a, seed=seed)
            assert report.rotated_parts >= 1 and report.ok, (how, seed, report.outputs)


# ------------------------------------------------------------------ slices that tile an axis
class SlicedQkv(nn.Module):
    """Phi-3's fused projection: one Linear(8 → 24) cut by slices into pieces of 12, 6 and 6,
    each read by its own Linear; and a lone slice ``g[..., :6]`` of another value, which leaves
    the rest of its axis unread (no tiling: blocked)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.q = nn.Linear(12, 4)
        self.k = nn.Linear(6, 4)
        self.v = nn.Linear(6, 4)
        self.g = nn.Linear(8, 10)
        self.h = nn.Linear(6, 4)

    def forward(self, x):
        y = self.qkv(x)
        q, k, v = y[..., :12], y[..., 12:18], y[..., 18:]
        return self.q(q) + self.k(k) + self.v(v) + self.h(self.g(x)[..., :6])


class RotateHalf(nn.Module):
    """``cat((-x2, x1))`` of the two halves of one value (a rotary embedding's rotate_half):
    slices joined again in another order stay blocked."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.b = nn.Linear(12, 4)

    def forward(self, x):
        h = self.a(x)
        x1, x2 = h[..., :6], h[..., 6:]
        return self.b(h + torch.cat((-x2, x1), dim=-1))


@functools.cache
def sliced_qkv():
    torch.manual_seed(0)
    return analysed(SlicedQkv(), x=torch.randn(2, 3, 8))


def test_slices_that_tile_an_axis_make_it_their_segments():
    a = sliced_qkv()
    ax = Axes(a)
    fused = ax.p("qkv.weight", 0)
    assert ax.segments(fused) == [12, 6, 6]
    pieces = [ax.out(node(a, "slice", i), -1) for i in range(3)]
    assert pieces == [ax.p("q.weight", 1), ax.p("k.weight", 1), ax.p("v.weight", 1)]
    assert all(ax.movable(c) for c in pieces)
    assert_fixed_by(ax, ax.p("g.weight", 0), "takes part of it")  # a lone slice: blocked


def test_rejoined_slices_stay_blocked():
    torch.manual_seed(0)
    a = analysed(RotateHalf(), x=torch.randn(2, 3, 8))
    ax = Axes(a)
    assert_fixed_by(ax, ax.p("a.weight", 0), "takes part of it")


def test_slices_that_tile_an_axis_semantics():
    a = sliced_qkv()
    group = group_of(a, "qkv.weight", 0)
    assert group.structure == "channels0 12 + channels1 6 + channels2 6"
    assert_verifies(a)
