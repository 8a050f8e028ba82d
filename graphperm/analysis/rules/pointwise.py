"""Pointwise ops: unary maps, broadcasting binary/ternary maps, dtype and copy ops."""

from __future__ import annotations

from graphperm.analysis.context import Axis, RuleContext
from graphperm.analysis.rules import register, rotates

#: Elementwise nonlinearities: where a ``pre`` activation site ends and ``post`` begins.
NONLINEAR = frozenset(
    f"aten.{n}"
    for n in """gelu relu relu6 silu elu selu celu leaky_relu hardtanh tanh sigmoid softplus mish
hardswish hardsigmoid log_sigmoid prelu glu""".split()
)

_UNARY = """abs neg exp exp2 expm1 log log1p log2 log10 sqrt rsqrt sin cos tan asin acos atan sinh
cosh erf erfc erfinv reciprocal sign sgn square floor ceil round trunc frac logical_not
bitwise_not isnan isinf isfinite nan_to_num clamp clamp_min clamp_max clip gelu relu
relu6 silu elu selu celu leaky_relu hardtanh tanh sigmoid softplus mish hardswish
hardsigmoid log_sigmoid logit dropout alpha_dropout feature_dropout
feature_alpha_dropout native_dropout contiguous clone detach detach_ alias lift_fresh_copy
_to_copy to positive fill zero relu_ gelu_ silu_ tanh_ sigmoid_ clamp_ dropout_ fill_
zero_ mul_ div_ abs_ neg_ exp_""".split()

_BROADCAST = """add sub rsub mul div true_divide floor_divide remainder fmod pow maximum minimum
fmax fmin eq ne lt le gt ge logical_and logical_or logical_xor bitwise_and bitwise_or
bitwise_xor atan2 copysign hypot where masked_fill addcmul addcdiv lerp xlogy add_ sub_
multiply divide subtract __and__ __or__ __xor__
masked_fill_""".split()


def _first_tensor_like(ctx: RuleContext) -> None:
    """Output is arg 0 mapped elementwise; any other tensor argument only gives dtype/device,
    or a scalar parameter (pow's exponent, clamp's bounds) broadcast over the input."""
    x = ctx.arg(0, "self") or ctx.arg(0, "input")
    if x is None:
        return
    others = [t for t in ctx.inputs if t.key != x.key]
    if others and all(t.shape == () or t.ndim == 0 for t in others):
        others = []
    if others:
        ctx.elementwise([x, *others], ctx.out)
    elif x.shape == ctx.out.shape:
        ctx.same(x, ctx.out)
    else:
        ctx.elementwise([x], ctx.out)
    if len(ctx.outputs) > 1:  # native_dropout returns (out, mask)
        for extra in ctx.outputs[1:]:
            if extra.shape == x.shape:
                ctx.same(x, extra)


register(*(f"aten.{n}" for n in _UNARY))(_first_tensor_like)


@register("aten.type_as", "aten.to.other", "aten.view_as", "aten.reshape_as")
def like_other(ctx: RuleContext) -> None:
    """``x.type_as(y)``: y lends only its dtype (view_as/reshape_as are handled by view rules)."""
    x, y = ctx.arg(0), ctx.arg(1)
    if ctx.op in ("aten.view_as.default", "aten.reshape_as.default"):
        from graphperm.analysis.rules.view import view_axes

        view_axes(ctx, x, ctx.out)
    else:
        ctx.same(x, ctx.out)
    if y is not None:
        ctx.reduce(*y.axes())


@register(*(f"aten.{n}" for n in _BROADCAST))
def broadcast(ctx: RuleContext) -> None:
    """Broadcasting map of several tensors; an ``add`` of two activations that come from
    different feature-making ops is a skip connection (tagged ``skip``)."""
    tensors = [t for t in ctx.inputs if t.ndim > 0]
    ctx.elementwise(tensors, ctx.out)
    if ctx.op.startswith("aten.add") and _is_skip(ctx, tensors):
        for d in range(ctx.out.ndim):
            ctx.tag(ctx.out[d], "skip")


def _is_skip(ctx: RuleContext, tensors: list) -> bool:
    """Two same-shape activations whose origins differ: ``x + W(f(x))`` or a sum of embeddings,
    not a pointwise function of one value (``x + 0.044715·x³`` in ``gelu_new``, ConvNeXt V2's
    ``γ·(x·N(x)) + β + x``)."""
    acts = [t for t in tensors if not t.is_param and not t.is_constant and t.shape == ctx.out.shape]
    if len(acts) < 2:
        return False
    by_key = {n.name: n for n in ctx.node.all_input_nodes}
    origins = {ctx.builder.origins(by_key[t.key.split("#")[0]]) for t in acts if t.key in by_key}
    return len(origins) > 1


@register("aten.copy_", "aten.copy")
def copy(ctx: RuleContext) -> None:
    """``dst.copy_(src)``: the result is ``src`` broadcast to ``dst``'s shape, in ``dst``."""
    dst, src = ctx.arg(0), ctx.arg(1)
    ctx.elementwise([dst, src], ctx.out)


@register("aten._assert_tensor_metadata", "aten._assert_async", "aten._functional_assert_async")
def assertion(ctx: RuleContext) -> None:
    """Runtime checks of metadata: indifferent to permutations."""
    for t in ctx.inputs:
        ctx.reduce(*t.axes())


@register("aten.glu")
def glu(ctx: RuleContext) -> None:
    """``glu(x, dim) = a * sigmoid(b)`` with ``a``, ``b`` the two halves of ``x`` along ``dim``
    (the conformer convolution module): that axis is the two halves laid end to end, and both are
    tied to the output's axis, as ``a[i]`` is gated by ``b[i]``."""
    x, out = ctx.arg(0), ctx.out
    dim = int(ctx.raw(1, "dim", -1)) % x.ndim
    half = x.shape[dim] // 2
    a, b = Axis(x, dim, "glu0", half), Axis(x, dim, "glu1", half)
    ctx.concat(x[dim], [a, b])
    ctx.tie(a, out[dim])
    ctx.tie(b, out[dim])
    for d in range(x.ndim):
        if d != dim:
            ctx.tie(x[d], out[d])


rotates(
    "move",
    "aten.dropout",
    "aten.alpha_dropout",
    "aten.feature_dropout",
    "aten.feature_alpha_dropout",
    "aten.native_dropout",
    "aten.contiguous",
    "aten.clone",
    "aten.detach",
    "aten.detach_",
    "aten.copy_",
    "aten.copy",
    "aten.alias",
    "aten.lift_fresh_copy",
    "aten._to_copy",
    "aten.to",
    "aten.positive",
    "aten.type_as",
    "aten.view_as",
    "aten.reshape_as",
    "aten._assert_tensor_metadata",
    "aten._assert_async",
    "aten._functional_assert_async",
)
rotates(
    "add",
    "aten.add",
    "aten.sub",
    "aten.rsub",
    "aten.add_",
    "aten.sub_",
    "aten.subtract",
    "aten.where",
    "aten.masked_fill",
    "aten.masked_fill_",
)
rotates(
    "scale",
    "aten.mul",
    "aten.div",
    "aten.true_divide",
    "aten.multiply",
    "aten.divide",
    "aten.mul_",
    "aten.div_",
    "aten.neg",
    "aten.neg_",
)
