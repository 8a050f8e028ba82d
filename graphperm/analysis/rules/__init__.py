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

__all__ = [
    "ROTATION_KINDS",
    "RULES",
    "Rule",
    "register",
    "rotates",
    "rotation_of",
    "rule_for",
    "rules_in",
]

Rule = Callable[[RuleContext], None]
RULES: dict[str, Rule] = {}

#: How an op treats an axis whose units are mixed by an orthogonal matrix (not just permuted);
#: :mod:`graphperm.analysis.symmetry` turns these into each part's family of exact transforms.
#: An op declared nowhere is ``"mix"``: it breaks rotations of every axis it touches (safe).
ROTATION_KINDS = {
    "move": "moves values between positions, never combines them (views, copies, slicing)",
    "linear": "multilinear (matmul, linear, conv, embedding lookup, attention): an axis is kept "
    "if it is on one input (or contracted between exactly two) and not a batch axis of two",
    "add": "sums its operands: an axis every operand carries is kept; one another operand "
    "broadcasts along (or a scalar) needs the all-ones direction kept",
    "scale": "multiplies or divides by values constant along the axis (one operand carries it)",
    "sum": "sums or averages over axes: those need the all-ones direction kept",
    "norm": "normalises over axes (LayerNorm, RMSNorm): kept when the all-ones direction is kept "
    "and its gain and bias can be folded into the linear layers that read it",
    "fill": "a constant tensor: a non-zero constant needs the all-ones direction kept",
    "mix": "anything else: breaks rotations of every axis it touches",
}
ROTATIONS: dict[str, str] = {}


def register(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for op names (``aten.linear.default``, or ``aten.add`` for all overloads)."""

    def deco(fn: Rule) -> Rule:
        for name in names:
            if name in RULES:
                raise ValueError(f"two rules registered for {name}")
            RULES[name] = fn
        return fn

    return deco


def rotates(kind: str, *names: str) -> None:
    """Declare how ops (names as in :func:`register`) treat rotated axes (see ROTATION_KINDS).

    Example:
        >>> rotation_of("aten.linear.default"), rotation_of("aten.gelu.default")
        ('linear', 'mix')
    """
    if kind not in ROTATION_KINDS:
        raise ValueError(f"unknown rotation kind {kind!r}; one of {sorted(ROTATION_KINDS)}")
    for name in names:
        if name in ROTATIONS:
            raise ValueError(f"two rotation kinds declared for {name}")
        ROTATIONS[name] = kind


def rules_in(module: str) -> list[str]:
    """The op names registered by rules defined in ``module`` (a family file's ``__name__``)
    that have no rotation kind yet: a family whose ops all act alike declares them at once."""
    return [n for n, fn in RULES.items() if fn.__module__ == module and n not in ROTATIONS]


def rotation_of(op: str) -> str:
    """How ``op`` treats rotated axes: the exact overload first, then the op's packet."""
    if op in ROTATIONS:
        return ROTATIONS[op]
    packet = op.rsplit(".", 1)[0] if op.count(".") >= 2 else op
    return ROTATIONS.get(packet, "mix")


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
    recurrent,
    reduction,
    segment,
    view,
)
