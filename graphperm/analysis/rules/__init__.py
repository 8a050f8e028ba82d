"""Op rules: how each ATen op couples the axes of its inputs and outputs.

One module per op family; each rule is registered for the op names it handles, as
``aten.<op>.<overload>`` or ``aten.<op>`` for every overload. A node whose op has no rule gets all
its axes blocked (safe: nothing coupled to them moves), and the analysis warns with the op's name
and module so a rule can be added. Adding support for an op means adding one function here and its
two tests (a golden axis map and a semantic check under real permutations).

Example:
    >>> from graphperm.analysis.rules import register, rule_for
    >>> @register("aten.my_gelu.default")
    ... def my_gelu(ctx):
    ...     ctx.same(ctx.arg(0), ctx.out)
    >>> rule_for("aten.my_gelu.default") is my_gelu
    True
"""

from __future__ import annotations

from collections.abc import Callable

from graphperm.analysis.context import RuleContext

__all__ = ["RULES", "Rule", "register", "rule_for"]

Rule = Callable[[RuleContext], None]
RULES: dict[str, Rule] = {}


def register(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for op names (``aten.linear.default``, or ``aten.add`` for all overloads)."""

    def deco(fn: Rule) -> Rule:
        for name in names:
            if name in RULES:
                raise ValueError(f"two rules registered for {name}")
            RULES[name] = fn
        return fn

    return deco


def rule_for(op: str) -> Rule | None:
    """The rule for an op name: the exact overload first, then the op's packet."""
    if op in RULES:
        return RULES[op]
    packet = op.rsplit(".", 1)[0] if op.count(".") >= 2 else op
    return RULES.get(packet)


# Importing the families registers their rules.
from graphperm.analysis.rules import (  # noqa: E402, F401
    attention,
    conv,
    creation,
    linear,
    norm,
    pointwise,
    reduction,
    segment,
    view,
)
