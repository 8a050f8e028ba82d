"""Convolutions, weight normalisation, pooling and resampling over spatial/time axes.

A convolution slides over its spatial axes, so those are blocked; its channel axes behave like a
linear layer's. With ``groups > 1`` the input channels are ``groups × (C_in / groups)`` blocks and
the output channels ``groups × (C_out / groups)``: the group index is shared by both, and inside a
group the channels can move freely (HuBERT's positional convolution has 16 groups).
"""

from __future__ import annotations

import math

from graphperm.analysis.context import Axis, RuleContext, TensorArg
from graphperm.analysis.rules import register, rotates
from graphperm.analysis.rules.linear import tag_weight_in

_SLIDES = "convolution slides over it"


_CONVS = tuple(
    f"aten.{n}"
    for n in """conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
convolution _convolution""".split()
)


@register(*_CONVS)
def conv(ctx: RuleContext) -> None:
    """Plain and transposed convolutions (``conv_transpose1d(x, w, b, stride, padding,
    output_padding, groups, dilation)`` has its groups where ``conv1d`` has them)."""
    x, w, b, out = ctx.arg(0), ctx.arg(1), ctx.arg(2, "bias"), ctx.out
    spatial = w.ndim - 2
    if ctx.op.startswith(("aten.convolution", "aten._convolution")):
        transposed, groups = bool(ctx.raw(6)), int(ctx.raw(8))
    else:
        transposed = ctx.op.startswith("aten.conv_transpose")
        groups = int(ctx.raw(6, "groups", 1))
    batched = x.ndim == spatial + 2
    c = 1 if batched else 0
    ctx.block(*x.axes()[c + 1 :], *w.axes()[2:], *out.axes()[c + 1 :], reason=_SLIDES)
    if batched:
        ctx.tie(x[0], out[0])
    # (in-channel axis of w, out-channel axis of w) for normal and transposed convolutions
    w_in, w_out = (0, 1) if transposed else (1, 0)
    ctx.tag(x[c], "conv_in")
    ctx.tag(out[c], "conv_out")
    tag_weight_in(ctx, w, 0 if transposed else 1)
    if b is not None:
        ctx.tie(b[0], out[c])
    if groups == 1:
        ctx.tie(x[c], w[w_in])
        ctx.tie(out[c], w[w_out])
        return
    if transposed:  # w: (C_in, C_out / g, k): rows are grouped like the input
        ctx.tie(x[c], w[0])
        gw, _ = ctx.blocks(w[0], [groups, w.shape[0] // groups], "groups")
        go, co = ctx.blocks(out[c], [groups, out.shape[c] // groups], "groups")
        ctx.tie(gw, go)
        ctx.tie(co, w[1])
    else:  # w: (C_out, C_in / g, k): rows are grouped like the output
        ctx.tie(out[c], w[0])
        gx, cx = ctx.blocks(x[c], [groups, x.shape[c] // groups], "groups")
        gw, _ = ctx.blocks(w[0], [groups, w.shape[0] // groups], "groups")
        ctx.tie(gx, gw)
        ctx.tie(cx, w[1])


@register("aten._weight_norm", "aten._weight_norm_interface")
def weight_norm(ctx: RuleContext) -> None:
    """``w = g * v / ||v||`` with the norm over every dim but ``dim``: a joint reduction, so any
    permutation of those dims leaves it unchanged; ``g`` follows ``v`` along ``dim``."""
    v, g = ctx.arg(0), ctx.arg(1)
    out = ctx.outputs[0]
    ctx.same(v, out)
    for d in range(g.ndim):
        if g.shape[d] == v.shape[d]:
            ctx.tie(g[d], v[d])
        else:
            ctx.free(g[d])
    for extra in ctx.outputs[1:]:  # the norms (interface variant)
        for d in range(extra.ndim):
            if extra.shape[d] == v.shape[d]:
                ctx.tie(extra[d], v[d])


_POOL = {
    "aten.avg_pool1d": 1,
    "aten.avg_pool2d": 2,
    "aten.avg_pool3d": 3,
    "aten.max_pool1d": 1,
    "aten.max_pool2d": 2,
    "aten.max_pool3d": 3,
    "aten.adaptive_avg_pool1d": 1,
    "aten.adaptive_avg_pool2d": 2,
    "aten.adaptive_avg_pool3d": 3,
    "aten.adaptive_max_pool1d": 1,
    "aten.adaptive_max_pool2d": 2,
    "aten.upsample_nearest1d": 1,
    "aten.upsample_nearest2d": 2,
    "aten.upsample_linear1d": 1,
    "aten.upsample_bilinear2d": 2,
    "aten.upsample_bicubic2d": 2,
    "aten.max_pool2d_with_indices": 2,
    "aten.pixel_shuffle": 0,
}


@register(*_POOL)
def pool(ctx: RuleContext) -> None:
    """Pooling and resampling act on the last k axes; channels and batch pass through."""
    x = ctx.arg(0)
    k = _POOL[ctx.op.rsplit(".", 1)[0]]
    if k == 0:
        for t in (x, *ctx.outputs):
            ctx.block(*t.axes(), reason=f"{ctx.op} moves elements across axes")
        return
    keep = _untouched(ctx, x, k) if len(ctx.outputs) == 1 else set()
    for out in ctx.outputs:
        _pass_leading(ctx, x, out, k, keep)


def _untouched(ctx: RuleContext, x: TensorArg, k: int) -> set[int]:
    """Pooled axes the op leaves as they are: a window of 1 with stride 1 and no padding (Funnel
    pools ``(stride, 1)`` windows over (positions, channels)), or an adaptive pool to the same
    size. Max pooling with indices is excluded (the indices number positions)."""
    op = ctx.op.rsplit(".", 1)[0]
    out = ctx.out
    first = x.ndim - k
    if op.startswith("aten.adaptive_"):
        return {d for d in range(first, x.ndim) if x.shape[d] == out.shape[d]}
    if not op.startswith(("aten.avg_pool", "aten.max_pool")) or "indices" in op:
        return set()
    kernel = _per_axis(ctx.raw(1, "kernel_size"), k)
    stride = _per_axis(ctx.raw(2, "stride") or kernel, k)
    padding = _per_axis(ctx.raw(3, "padding", 0), k)
    return {
        first + i
        for i in range(k)
        if kernel[i] == 1
        and stride[i] == 1
        and padding[i] == 0
        and x.shape[first + i] == out.shape[first + i]
    }


def _per_axis(value: object, k: int) -> list[int]:
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return values * k if len(values) == 1 else values


def _pass_leading(ctx: RuleContext, x: TensorArg, out: TensorArg, k: int, keep: set[int]) -> None:
    for d in range(x.ndim - k):
        ctx.tie(x[d], out[d])
    for d in keep:
        ctx.tie(x[d], out[d])
    ctx.block(
        *(x[d] for d in range(x.ndim - k, x.ndim) if d not in keep),
        *(out[d] for d in range(out.ndim - k, out.ndim) if d not in keep),
        reason=f"{ctx.op} mixes positions along it",
    )


@register("aten.im2col")
def im2col(ctx: RuleContext) -> None:
    """``nn.Unfold``: (N, C, H, W) → (N, C·kh·kw, L). Each output row is one channel at one
    kernel offset (channel outermost), so the row axis is ``C × offsets``: the channels move with
    the input's, the offsets and the L window positions are blocked (ConvBERT's span conv)."""
    x, out = ctx.arg(0), ctx.out
    c = x.ndim - 3
    if c:
        ctx.tie(x[0], out[0])
    ctx.block(x[c + 1], x[c + 2], out[c + 1], reason="im2col slides over it")
    offsets = math.prod(int(s) for s in ctx.raw(1))
    if offsets == 1:
        ctx.tie(x[c], out[c])
        return
    kernel = Axis(out, c, "offsets", offsets)
    ctx.split(out[c], [x[c], kernel])
    ctx.block(kernel, reason="im2col lays kernel offsets along it")


rotates("linear", *_CONVS)
