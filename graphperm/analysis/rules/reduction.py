"""Reductions: a sum (mean, max, norm, ...) over an axis is invariant to permuting it."""

from __future__ import annotations

from graphperm.analysis.context import RuleContext
from graphperm.analysis.rules import register, rotates

_REDUCE = """sum mean amax amin max min prod var std var_mean std_mean logsumexp norm
linalg_vector_norm any all count_nonzero nansum nanmean""".split()


@register(*(f"aten.{n}" for n in _REDUCE))
def reduce(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    if x is None:
        return
    if len(ctx.inputs) > 1 and ctx.op.split(".")[1] in ("max", "min"):  # max.other: pointwise
        ctx.elementwise(ctx.inputs, ctx.out)
        return
    dims = _dims(ctx, x.ndim)
    if ctx.op in ("aten.max.dim", "aten.min.dim"):  # (values, indices): indices name positions
        for d in dims:
            ctx.block(x[d], reason=f"{ctx.op} returns positions along it")
    keepdim = bool(ctx.raw(_position(ctx, "keepdim"), "keepdim", False))
    kept = [d for d in range(x.ndim) if d not in dims]
    ctx.reduce(*(x[d] for d in dims))
    for out in ctx.outputs:
        if out.ndim == 0:
            continue
        if keepdim:
            for d in kept:
                ctx.tie(x[d], out[d])
            ctx.free(*(out[d] for d in dims))
        else:
            for i, d in enumerate(kept):
                ctx.tie(x[d], out[i])


def _dims(ctx: RuleContext, ndim: int) -> list[int]:
    """The reduced dims; all of them when the op takes none."""
    raw = ctx.raw(_position(ctx, "dim"), "dim")
    if raw is None or isinstance(raw, bool):
        return list(range(ndim))
    if isinstance(raw, (int, float)):
        raw = [int(raw)]
    if not raw:
        return list(range(ndim))
    return sorted({int(d) % ndim for d in raw})


def _position(ctx: RuleContext, name: str) -> int:
    """Where argument ``name`` sits in the op's schema (a position past the end if it has none):
    ``amax.default(x, dim, keepdim)`` takes a dim, ``sum.default(x)`` does not, and
    ``linalg_vector_norm(x, ord, dim, keepdim)`` has it third."""
    schema = getattr(ctx.node.target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    return names.index(name) if name in names else len(names) + len(ctx.node.args)


@register(
    "aten.argmax",
    "aten.argmin",
    "aten.sort",
    "aten.argsort",
    "aten.topk",
    "aten.cumsum",
    "aten.cumprod",
    "aten.cummax",
    "aten.flip",
    "aten.roll",
    "aten.kthvalue",
)
def positional(ctx: RuleContext) -> None:
    """Ops whose result depends on where values sit along ``dim``: that dim is blocked."""
    x = ctx.arg(0)
    if ctx.op.startswith(("aten.flip", "aten.roll")):
        dims = ctx.raw(1) if ctx.op.startswith("aten.flip") else ctx.raw(2, "dims")
        dims = list(range(x.ndim)) if dims is None else dims
    elif ctx.op.startswith("aten.topk") or ctx.op.startswith("aten.kthvalue"):
        dims = [ctx.raw(2, "dim", -1)]
    elif ctx.op.startswith(("aten.sort", "aten.argsort")):  # dim defaults to -1, not all
        dims = [ctx.raw(1, "dim", -1)]
    else:
        dims = ctx.raw(1, "dim")
    dims = list(range(x.ndim)) if dims is None else dims
    dims = [dims] if isinstance(dims, int) else dims
    dims = sorted({int(d) % x.ndim for d in dims})
    reason = f"{ctx.op} depends on positions along it"
    for out in ctx.outputs:
        if out.ndim == x.ndim:
            for d in range(x.ndim):
                if d in dims:
                    ctx.block(x[d], out[d], reason=reason)
                else:
                    ctx.tie(x[d], out[d])
        else:  # argmax without keepdim
            kept = [d for d in range(x.ndim) if d not in dims]
            ctx.block(*(x[d] for d in dims), reason=reason)
            for i, d in enumerate(kept[: out.ndim]):
                ctx.tie(x[d], out[i])


rotates("sum", "aten.sum", "aten.mean", "aten.nansum", "aten.nanmean")
