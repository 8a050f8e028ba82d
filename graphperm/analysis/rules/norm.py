"""Normalisations: statistics over a set of axes, then a per-channel affine map.

Normalising over a set of axes is equivariant to any permutation of them, so the normalised axes
are tied through to the output and to the affine weight and bias. ``group_norm`` with
``1 < G < C`` normalises each block of ``C / G`` channels on its own: the channels are
``G × (C / G)`` blocks whose order and contents may move, but never across a block boundary.
"""

from __future__ import annotations

from graphperm.analysis.context import RuleContext
from graphperm.analysis.rules import register, rotates


@register("aten.layer_norm", "aten.native_layer_norm", "aten.rms_norm", "aten._fused_rms_norm")
def layer_norm(ctx: RuleContext) -> None:
    x, shape, w, b = ctx.arg(0), ctx.raw(1), ctx.arg(2), ctx.arg(3)
    out = ctx.outputs[0]
    ctx.same(x, out)
    for d in range(1, len(shape) + 1):
        for p in (w, b):
            if p is not None and p.ndim >= d:
                ctx.tie(p[-d], x[-d])
    for stats in ctx.outputs[1:]:  # native_layer_norm's mean and rstd: (..., 1, ..., 1)
        for d in range(stats.ndim):
            if stats.shape[d] == x.shape[d]:
                ctx.tie(stats[d], x[d])
            else:
                ctx.free(stats[d])
    ctx.reduce(*(x[-d] for d in range(1, len(shape) + 1)))


@register("aten.group_norm")
def group_norm(ctx: RuleContext) -> None:
    x, groups, w, b = ctx.arg(0), int(ctx.raw(1)), ctx.arg(2), ctx.arg(3)
    out = ctx.out
    channels = x.shape[1]
    ctx.same(x, out)
    for p in (w, b):
        if p is not None:
            ctx.tie(p[0], x[1])
    if 1 < groups < channels:
        ctx.blocks(x[1], [groups, channels // groups], "gn")


@register(
    "aten.batch_norm",
    "aten.native_batch_norm",
    "aten._native_batch_norm_legit_no_training",
    "aten._native_batch_norm_legit",
    "aten.instance_norm",
    "aten._batch_norm_with_update",
    "aten._batch_norm_no_update",
)
def batch_norm(ctx: RuleContext) -> None:
    """Per-channel statistics (axis 1): weight, bias and running stats follow the channels."""
    x = ctx.arg(0)
    out = ctx.outputs[0]
    ctx.same(x, out)
    for t in ctx.inputs:
        if t.key != x.key and t.ndim == 1 and t.shape[0] == x.shape[1]:
            ctx.tie(t[0], x[1])
    for extra in ctx.outputs[1:]:
        if extra.ndim == 1 and extra.shape[0] == x.shape[1]:
            ctx.tie(extra[0], x[1])
        else:
            ctx.free(*extra.axes())


rotates(
    "norm", "aten.layer_norm", "aten.native_layer_norm", "aten.rms_norm", "aten._fused_rms_norm"
)
