"""Ops that cut, join, index or pad along an axis.

Joining along a channel axis (cat) or cutting it (chunk, split) makes it a concatenation of
segments: each segment may be permuted inside, never across. Taking part of an axis (a slice, an
index, padding) is not equivariant along it, so that axis is blocked. Lookups (embedding, gather)
block the looked-up axis and pass the others through.
"""

from __future__ import annotations

import torch
from torch import fx

from graphperm.analysis.context import Axis, RuleContext, TensorArg
from graphperm.analysis.rules import register, rotates, rules_in

_INT_MAX = 2**62


@register("getitem")
def getitem(ctx: RuleContext) -> None:
    """``operator.getitem`` on a multi-output node: the element is the output."""
    element = ctx.builder.element(ctx.raw(0), int(ctx.raw(1)))
    if element is not None and ctx.outputs:
        ctx.same(element, ctx.out)


@register("aten.cat", "aten.concat", "aten.concatenate")
def cat(ctx: RuleContext) -> None:
    tensors = [t for t in ctx.tensors(0) if t.ndim == ctx.out.ndim]
    out = ctx.out
    dim = int(ctx.raw(1, "dim", 0)) % out.ndim
    for t in tensors:
        for d in range(out.ndim):
            if d != dim:
                ctx.tie(t[d], out[d])
    ctx.concat(out[dim], [t[dim] for t in tensors])
    for t in ctx.tensors(0):  # legacy empty (0,) tensors contribute nothing
        if t.ndim != out.ndim:
            ctx.free(*t.axes())


@register(
    "aten.split",
    "aten.split_with_sizes",
    "aten.chunk",
    "aten.tensor_split",
    "aten.unsafe_split",
    "aten.unsafe_chunk",
    "aten.split_copy",
)
def split(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    dim = int(ctx.raw(2, "dim", 0)) % x.ndim
    for out in ctx.outputs:
        for d in range(x.ndim):
            if d != dim:
                ctx.tie(x[d], out[d])
    ctx.concat(x[dim], [out[dim] for out in ctx.outputs])


@register("aten.unbind", "aten.stack", "aten.hstack", "aten.vstack")
def unbind_stack(ctx: RuleContext) -> None:
    """A new axis indexes separate tensors: it is blocked, the others pass through."""
    if ctx.op.startswith("aten.unbind"):
        x, parts = ctx.arg(0), ctx.outputs
        dim = int(ctx.raw(1, "dim", 0)) % x.ndim
    else:
        x, parts = ctx.out, ctx.tensors(0)
        dim = int(ctx.raw(1, "dim", 0)) % x.ndim
    if ctx.op.startswith(("aten.hstack", "aten.vstack")):
        for t in (x, *parts):
            ctx.block(*t.axes(), reason=f"{ctx.op} is not handled axis by axis")
        return
    ctx.block(x[dim], reason=f"{ctx.op} indexes separate tensors along it")
    for p in parts:
        for d, xd in enumerate(i for i in range(x.ndim) if i != dim):
            ctx.tie(p[d], x[xd])


@register("aten.slice", "aten.narrow", "aten.slice_copy")
def slice_(ctx: RuleContext) -> None:
    """Part of an axis: blocked, unless the slices of that axis of the same value tile it (a
    fused ``qkv`` projection cut into q, k and v of different sizes, a rotary embedding's halves
    or its rotated and passed-through channels); then the axis is those pieces laid end to end,
    as if it were split, and each slice is its piece."""
    x, out = ctx.arg(0), ctx.out
    dim = int(ctx.raw(1, "dim", 0)) % x.ndim
    for d in range(x.ndim):
        if d != dim or x.shape[d] == out.shape[d]:
            ctx.tie(x[d], out[d])
    if x.shape[dim] == out.shape[dim]:
        return
    pieces = _tiling(ctx.node, dim, x.shape[dim])
    if pieces is None:
        ctx.block(x[dim], out[dim], reason=f"{ctx.op} takes part of it")
        return
    segments = [Axis(x, dim, f"piece{start}", end - start) for start, end in pieces]
    ctx.concat(x[dim], segments)
    mine = _span(ctx.node, x.shape[dim])
    ctx.tie(segments[pieces.index(mine)], out[dim])


def _span(node: fx.Node, n: int) -> tuple[int, int] | None:
    """``(start, end)`` that the slice or narrow ``node`` takes of an axis of size ``n`` (step 1
    only), or None."""
    name = str(node.target)
    args = list(node.args) + [None] * 5
    if "narrow" in name:
        start, length = args[2], args[3]
        if not isinstance(start, int) or not isinstance(length, int):
            return None
        start = start % n if start < 0 else start
        return (start, start + length)
    start, end, step = args[2], args[3], args[4]
    start = node.kwargs.get("start", start)
    end = node.kwargs.get("end", end)
    step = node.kwargs.get("step", step)
    if step not in (None, 1) or not all(isinstance(v, int) or v is None for v in (start, end)):
        return None
    start = 0 if start is None else (start + n if start < 0 else start)
    end = n if end is None or end >= _INT_MAX else (end + n if end < 0 else end)
    start, end = max(0, min(start, n)), max(0, min(end, n))
    return (start, end) if end > start else None


def _tiling(node: fx.Node, dim: int, n: int) -> list[tuple[int, int]] | None:
    """The pieces, in order, when the slices along ``dim`` of ``node``'s input by all its users
    cover the axis exactly once; else None."""
    x = node.args[0]
    spans = set()
    for user in x.users:
        if user.op != "call_function" or user.args[0] is not x:
            continue
        if not str(user.target).startswith(("aten.slice.", "aten.narrow.", "aten.slice_copy.")):
            continue
        ndim = len(x.meta["val"].shape) if "val" in x.meta else None
        if ndim is None or int(user.args[1] if len(user.args) > 1 else 0) % ndim != dim:
            continue
        span = _span(user, n)
        if span is None:
            return None
        if span != (0, n):
            spans.add(span)
    pieces = sorted(spans)
    if not pieces or pieces[0][0] != 0 or pieces[-1][1] != n:
        return None
    if any(a[1] != b[0] for a, b in zip(pieces, pieces[1:])):
        return None  # a gap or an overlap
    if _rejoined(x, dim):
        return None
    return pieces


def _rejoined(x: fx.Node, dim: int) -> bool:
    """Whether two slices of ``x`` are joined again by one ``cat`` (directly or through a
    one-input pointwise op): a rotary embedding's ``cat((-x2, x1))``, which pairs channel ``i``
    with ``i + d/2``. Such an axis stays blocked, as before tiling was understood: its pairs
    rotate by fixed frequencies, so no permutation of them keeps the function anyway, and a
    saved frequency table would otherwise be permuted with them."""
    slices = {u for u in x.users if str(u.target).startswith(("aten.slice.", "aten.narrow."))}
    joined: dict[fx.Node, set[fx.Node]] = {}
    for piece in slices:
        for user in piece.users:
            step = [user, *user.users] if len(user.all_input_nodes) == 1 else [user]
            for cat in step:
                if str(cat.target).startswith("aten.cat."):
                    joined.setdefault(cat, set()).add(piece)
    return any(len(pieces) > 1 for pieces in joined.values())


@register("aten.select", "aten.select_copy")
def select(ctx: RuleContext) -> None:
    x, out = ctx.arg(0), ctx.out
    dim = int(ctx.raw(1)) % x.ndim
    ctx.block(x[dim], reason=f"{ctx.op} picks one position of it")
    for i, d in enumerate(d for d in range(x.ndim) if d != dim):
        ctx.tie(x[d], out[i])


@register(
    "aten.constant_pad_nd",
    "aten.pad",
    "aten.reflection_pad1d",
    "aten.reflection_pad2d",
    "aten.replication_pad1d",
    "aten.replication_pad2d",
)
def pad(ctx: RuleContext) -> None:
    x, out = ctx.arg(0), ctx.out
    widths = list(ctx.raw(1))
    padded = {x.ndim - 1 - i // 2 for i, w in enumerate(widths) if w != 0}
    for d in range(x.ndim):
        if d in padded:
            ctx.block(x[d], out[d], reason=f"{ctx.op} pads it")
        else:
            ctx.tie(x[d], out[d])


@register("aten.embedding")
def embedding(ctx: RuleContext) -> None:
    """``W[idx]``: the vocabulary axis is looked up, the feature axis is produced."""
    w, idx, out = ctx.arg(0), ctx.arg(1), ctx.out
    ctx.block(w[0], reason="embedding rows are looked up by index")
    ctx.tie(out[-1], w[1], tag="linear_out")
    for d in range(idx.ndim):
        ctx.tie(idx[d], out[d])


@register("aten.index_select")
def index_select(ctx: RuleContext) -> None:
    x, idx, out = ctx.arg(0), ctx.arg(2), ctx.out
    dim = int(ctx.raw(1)) % x.ndim
    ctx.block(x[dim], reason="index_select looks positions up along it")
    ctx.tie(idx[0], out[dim])
    for d in range(x.ndim):
        if d != dim:
            ctx.tie(x[d], out[d])


@register("aten.gather")
def gather(ctx: RuleContext) -> None:
    """``out[..i..] = x[..idx[..i..]..]`` along ``dim``; the index has the output's shape."""
    x, idx, out = ctx.arg(0), ctx.arg(2), ctx.out
    dim = int(ctx.raw(1)) % x.ndim
    ctx.block(x[dim], reason="gather looks positions up along it")
    ctx.same(idx, out)
    for d in range(x.ndim):
        if d != dim:
            if x.shape[d] == out.shape[d]:
                ctx.tie(x[d], out[d])
            else:
                ctx.block(x[d], reason="gather reads only part of it")


@register("aten.index")
def index(ctx: RuleContext) -> None:
    """``x[i0, i1, ...]`` with index tensors on the leading dims; trailing dims pass through."""
    x, out = ctx.arg(0), ctx.out
    indices = list(ctx.raw(1))
    lead = len(indices)
    idx = [ctx.builder.tensor(i) if i is not None else None for i in indices]
    if any(i is None for i in idx):  # index tensors after a full slice: not handled axis-wise
        for t in (x, out, *(i for i in idx if i)):
            ctx.block(*t.axes(), reason="advanced indexing after a slice")
        return
    ctx.block(*(x[d] for d in range(lead)), reason="it is indexed by a tensor of positions")
    n_idx = out.ndim - (x.ndim - lead)
    for t in idx:
        _tie_broadcast(ctx, t, out, n_idx)
    for d in range(lead, x.ndim):
        ctx.tie(x[d], out[n_idx + d - lead])


@register("aten.index_put", "aten.index_put_", "aten._index_put_impl_", "aten._unsafe_index_put")
def index_put(ctx: RuleContext) -> None:
    """``x[i0, i1, ...] = values`` (``+=`` with ``accumulate``): index tensors, or boolean masks
    (one covers as many dims as it has), pick positions on the leading dims; the trailing dims
    pass through, and ``values`` broadcasts onto them from the right (HuBERT's
    ``hidden[mask] = masked_spec_embed``: the embedding is in the residual stream's basis)."""
    x, values, out = ctx.arg(0), ctx.arg(2, "values"), ctx.out
    indices = list(ctx.raw(1, "indices"))
    idx = [ctx.builder.tensor(i) if isinstance(i, fx.Node) else None for i in indices]
    if any(i is None for i in idx):  # a full slice before an index tensor: not handled axis-wise
        for t in (x, out, values, *(i for i in idx if i)):
            if t is not None:
                ctx.block(*t.axes(), reason="advanced indexing after a slice")
        return
    lead = sum(
        t.ndim if i.meta["val"].dtype == torch.bool else 1
        for i, t in zip(indices, idx, strict=True)
    )
    for t in idx:
        ctx.block(*t.axes(), reason=f"{ctx.op} writes at the positions it holds")
    ctx.block(
        *(x[d] for d in range(lead)),
        *(out[d] for d in range(lead)),
        reason=f"{ctx.op} writes at positions picked along it",
    )
    for d in range(x.ndim):  # the same positions (a batch axis stays the batch axis)
        ctx.tie(x[d], out[d])
    if values is None:
        return
    for i in range(1, values.ndim + 1):
        v = values[-i]
        if i <= x.ndim - lead and v.size == x.shape[-i]:
            ctx.tie(v, x[-i])
        elif v.size == 1:
            ctx.free(v)
        else:
            ctx.block(v, reason=f"{ctx.op} writes these values at indexed positions")


def _tie_broadcast(ctx: RuleContext, t: TensorArg, out: TensorArg, n: int) -> None:
    """Tie ``t``'s dims to the first ``n`` dims of ``out``, aligned from the right."""
    for i in range(1, t.ndim + 1):
        a, o = t[-i], out[n - i]
        if a.size == o.size:
            ctx.tie(a, o)
        else:
            ctx.free(a)


@register("aten.repeat")
def repeat(ctx: RuleContext) -> None:
    """``x.repeat(reps)`` lays ``reps[d]`` copies of ``x`` end to end along each axis: the output
    axis is ``copies × x``'s axis (row-major), and the output is the same in every copy, so the
    copies may be permuted at will; new leading axes and repeats of a size-1 axis are a plain
    broadcast (ViTMAE's ``ids.unsqueeze(-1).repeat(1, 1, dim)``)."""
    x, out = ctx.arg(0), ctx.out
    reps = [int(r) for r in ctx.raw(1)]
    offset = out.ndim - x.ndim
    ctx.free(*(out[d] for d in range(offset)))
    for d in range(x.ndim):
        o = out[offset + d]
        if x.shape[d] == 1:
            ctx.free(x[d], o)
        elif reps[offset + d] == 1:
            ctx.tie(x[d], o)
        else:
            ctx.split(o, [Axis(out, offset + d, "copies", reps[offset + d]), x[d]])


@register("aten.repeat_interleave.self_int")
def repeat_interleave(ctx: RuleContext) -> None:
    """``x.repeat_interleave(r, dim)`` repeats each element ``r`` times in place: the output axis
    is ``x``'s axis × ``r`` copies (row-major), the copies being equal (Funnel's and CANINE's
    upsampling); without ``dim`` the input is flattened first, which is blocked."""
    x, out = ctx.arg(0), ctx.out
    reps, dim = int(ctx.raw(1)), ctx.raw(2, "dim")
    if dim is None:
        ctx.block(*x.axes(), *out.axes(), reason="repeat_interleave flattens it")
        return
    dim = int(dim) % x.ndim
    for d in range(x.ndim):
        if d != dim:
            ctx.tie(x[d], out[d])
    ctx.split(out[dim], [x[dim], Axis(out, dim, "copies", reps)])


# ``x[idx] = values`` keeps x's rows or writes values' rows (or adds them): each output element
# comes from one operand at the same channel, like ``where`` with the index as its selector
rotates(
    "add", "aten.index_put", "aten.index_put_", "aten._index_put_impl_", "aten._unsafe_index_put"
)
rotates("linear", "aten.embedding")  # a row lookup: linear in the table
# a constant pad writes its value along every axis it keeps: not declared, so not rotated
rotates("mix", *(n for n in rules_in(__name__) if "pad" in n))
# the rest of this file only moves values (concatenates, splits, slices, gathers, repeats)
rotates("move", *rules_in(__name__))
