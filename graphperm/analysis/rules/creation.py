"""Tensor factories: constants are free along every axis, ranges and random draws are not."""

from __future__ import annotations

from graphperm.analysis.context import RuleContext
from graphperm.analysis.rules import register, rotates


@register(
    "aten.zeros",
    "aten.ones",
    "aten.full",
    "aten.empty",
    "aten.scalar_tensor",
    "aten.zeros_like",
    "aten.ones_like",
    "aten.full_like",
    "aten.empty_like",
    "aten.new_zeros",
    "aten.new_ones",
    "aten.new_full",
    "aten.new_empty",
    "aten.empty_strided",
)
def constant(ctx: RuleContext) -> None:
    """Output is the same value everywhere; inputs only lend shape/dtype."""
    for t in ctx.inputs:
        ctx.reduce(*t.axes())
    for t in ctx.outputs:
        ctx.free(*t.axes())


@register(
    "aten.arange",
    "aten.linspace",
    "aten.eye",
    "aten.rand",
    "aten.randn",
    "aten.randint",
    "aten.rand_like",
    "aten.randn_like",
    "aten.randint_like",
    "aten.bernoulli",
    "aten.tril",
    "aten.triu",
    "aten.tensor",
)
def varying(ctx: RuleContext) -> None:
    """Output varies along its axes in a way that no permutation of anything else can follow."""
    for t in ctx.inputs:
        ctx.block(*t.axes(), reason=f"{ctx.op} makes values that depend on the position")
    for t in ctx.outputs:
        ctx.block(*t.axes(), reason=f"{ctx.op} makes values that depend on the position")


rotates(
    "move",
    "aten.zeros",
    "aten.empty",
    "aten.zeros_like",
    "aten.empty_like",
    "aten.new_zeros",
    "aten.new_empty",
    "aten.empty_strided",
)
rotates(
    "fill",
    "aten.ones",
    "aten.full",
    "aten.scalar_tensor",
    "aten.ones_like",
    "aten.full_like",
    "aten.new_ones",
    "aten.new_full",
)
