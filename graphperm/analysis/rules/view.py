"""View ops: reshapes that split or merge axes, dimension permutations, broadcasts.

A reshape is read like PyTorch's DTensor view rules: the input and output shapes are walked
together and cut into groups of equal element count. A group of one input and one output dim is a
tie; one input dim becoming several output dims is a *split* (768 → 12 heads × 64), several
becoming one is a *flatten*. Size-1 dims carry nothing and are skipped.
"""

from __future__ import annotations

import math

from graphperm.analysis.context import Axis, RuleContext, TensorArg
from graphperm.analysis.rules import register, rotates, rules_in


@register(
    "aten.view",
    "aten.reshape",
    "aten._unsafe_view",
    "aten.flatten",
    "aten.unflatten",
    "aten.squeeze",
    "aten.unsqueeze",
    "aten.view_copy",
    "aten._reshape_alias",
    "aten.unsqueeze_copy",
    "aten.squeeze_copy",
)
def view(ctx: RuleContext) -> None:
    """Any op whose output is its input's elements in the same order under another shape."""
    view_axes(ctx, ctx.arg(0), ctx.out)


def view_axes(ctx: RuleContext, src: TensorArg, dst: TensorArg) -> None:
    """Relate the axes of ``src`` and ``dst``, two shapes of the same row-major elements."""
    for a_dims, b_dims in _groups(src.shape, dst.shape):
        a_axes, b_axes = [src[d] for d in a_dims], [dst[d] for d in b_dims]
        if len(a_axes) == 1 and len(b_axes) == 1:
            ctx.tie(a_axes[0], b_axes[0])
        elif len(a_axes) == 1:
            ctx.split(a_axes[0], b_axes)
        elif len(b_axes) == 1:
            ctx.split(b_axes[0], a_axes)
        else:  # (6, 4) -> (4, 6): both sides factor one flat index; unification finds a common
            total = math.prod(a.size for a in a_axes)  # refinement or fixes it
            flat = Axis(dst, b_dims[0], "flat", total)
            ctx.split(flat, a_axes)
            ctx.split(flat, b_axes)
    ctx.free(*(a for a in src.axes() if a.size == 1), *(a for a in dst.axes() if a.size == 1))


def _groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Cut two shapes with equal numels into aligned groups of equal numel (size-1 dims dropped)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ia) and j < len(ib):
        ga, gb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(ia):
                    raise ValueError(f"shapes {a} and {b} do not hold the same elements")
                pa *= a[ia[i]]
                ga.append(ia[i])
                i += 1
            else:
                if j >= len(ib):
                    raise ValueError(f"shapes {a} and {b} do not hold the same elements")
                pb *= b[ib[j]]
                gb.append(ib[j])
                j += 1
        out.append((ga, gb))
    if i < len(ia) or j < len(ib):
        raise ValueError(f"shapes {a} and {b} do not hold the same elements")
    return out


@register("aten.transpose", "aten.swapaxes", "aten.swapdims")
def transpose(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    d0, d1 = (int(d) % x.ndim for d in (ctx.raw(1), ctx.raw(2)))
    order = list(range(x.ndim))
    order[d0], order[d1] = order[d1], order[d0]
    _permuted(ctx, x, order)


@register("aten.t", "aten.numpy_T", "aten.mT")
def t(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    order = list(range(x.ndim))
    if x.ndim >= 2:
        order[-1], order[-2] = order[-2], order[-1]
    _permuted(ctx, x, order)


@register("aten.permute")
def permute(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    _permuted(ctx, x, [int(d) % x.ndim for d in ctx.raw(1)])


@register("aten.movedim")
def movedim(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    src, dst = ctx.raw(1), ctx.raw(2)
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [s % x.ndim for s in src], [d % x.ndim for d in dst]
    order: list[int | None] = [None] * x.ndim
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(i for i in range(x.ndim) if i not in src)
    _permuted(ctx, x, [o if o is not None else next(rest) for o in order])


def _permuted(ctx: RuleContext, x: TensorArg, order: list[int]) -> None:
    """Output dim ``i`` is input dim ``order[i]``."""
    for i, src in enumerate(order):
        ctx.tie(x[src], ctx.out[i])


@register("aten.expand", "aten.broadcast_to", "aten.expand_as", "aten.expand_copy")
def expand(ctx: RuleContext) -> None:
    """New and stretched dims are constant along themselves; the others are kept."""
    x, out = ctx.arg(0), ctx.out
    ctx.elementwise([x], out)
    other = ctx.arg(1)
    if other is not None:  # expand_as: the other tensor only lends its shape
        ctx.reduce(*other.axes())


@register("aten.as_strided", "aten.as_strided_copy")
def as_strided(ctx: RuleContext) -> None:
    """A window view by explicit strides (Longformer's overlapping chunks). Output dim ``d`` is
    input dim ``e`` when both have the same size ``n`` and stride ``s`` over a contiguous input,
    every other output dim either steps over whole blocks of ``s·n`` elements or stays inside
    one element of ``e`` (its reach, with the offset's, under ``s``), and the offset starts a
    block: then the index along ``e`` is the index along ``d``. Every other axis is blocked."""
    x, out = ctx.arg(0), ctx.out
    size, stride = list(ctx.raw(1, "size")), list(ctx.raw(2, "stride"))
    offset = ctx.raw(3, "storage_offset", 0) or 0
    value = ctx.node.args[0].meta.get("val")
    tied: set[int] = set()
    tied_out: set[int] = set()
    ok = (
        value is not None
        and value.is_contiguous()
        and value.storage_offset() == 0
        and all(isinstance(v, int) for v in (*size, *stride, offset))
    )
    if ok:
        in_strides = list(value.stride())
        for d, (n, s) in enumerate(zip(size, stride)):
            e = next((e for e in range(x.ndim) if x.shape[e] == n and in_strides[e] == s), None)
            if n <= 1 or e is None or e in tied:
                continue
            others = [(m, t) for i, (m, t) in enumerate(zip(size, stride)) if i != d and m > 1]
            outer = all(t % (s * n) == 0 for m, t in others if t >= s * n)
            reach = offset % s + sum((m - 1) * t for m, t in others if t < s * n)
            if outer and reach < s and (offset // s) % n == 0:
                ctx.tie(x[e], out[d])
                tied.add(e)
                tied_out.add(d)
    why = f"{ctx.op} takes overlapping or partial windows of it"
    ctx.block(*(x[e] for e in range(x.ndim) if e not in tied), reason=why)
    ctx.block(*(out[d] for d in range(out.ndim) if d not in tied_out), reason=why)


# views, dimension permutations and broadcasts only move values: every rule in this file
rotates("move", *rules_in(__name__))
