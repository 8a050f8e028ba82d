"""What an op rule sees and says: the tensors of one graph node and the axis relations among them.

A rule receives a :class:`RuleContext` for one call node. It reads the node's tensor arguments
(:meth:`RuleContext.arg`) and output(s) (:attr:`RuleContext.out`), and states, for every axis of
every one of them, how it moves:

- :meth:`~RuleContext.tie` two axes that must be permuted identically;
- :meth:`~RuleContext.split` a flat axis into factor axes (a view 768 → 12 × 64), or split it into
  new virtual factors (:meth:`~RuleContext.blocks`, e.g. a grouped convolution's groups);
- :meth:`~RuleContext.concat` a flat axis from segments (cat, chunk);
- :meth:`~RuleContext.reduce` an input axis the op is invariant to (a sum over it);
- :meth:`~RuleContext.free` an output axis along which the output is constant (expand);
- :meth:`~RuleContext.block` an axis the op is not equivariant along (conv over time, slicing).

Axes a rule does not mention are blocked after it runs, so a rule that forgets an axis costs
permutability, never correctness. Rules never edit the graph.

Example:
    >>> from graphperm.analysis.rules import register
    >>> @register("example.scale_rows")            # doctest: +SKIP
    ... def scale_rows(ctx):
    ...     x, out = ctx.arg(0), ctx.out
    ...     ctx.elementwise([x], out)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from graphperm.analysis.coupling import CouplingBuilder

__all__ = ["Axis", "RuleContext", "TensorArg"]


@dataclass(frozen=True)
class TensorArg:
    """One tensor flowing into or out of a node: its value key and static shape."""

    key: str
    shape: tuple[int, ...]
    is_param: bool = False
    is_constant: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, dim: int) -> Axis:
        if not -self.ndim <= dim < self.ndim:
            raise IndexError(f"{self.key} has {self.ndim} dims, no dim {dim}")
        return Axis(self, dim % self.ndim)

    def axes(self) -> list[Axis]:
        return [Axis(self, d) for d in range(self.ndim)]


@dataclass(frozen=True)
class Axis:
    """Axis ``dim`` of ``tensor``; a virtual axis has ``virtual`` set and no dim of its own."""

    tensor: TensorArg
    dim: int
    virtual: str = ""
    vsize: int = 0

    @property
    def size(self) -> int:
        return self.vsize if self.virtual else self.tensor.shape[self.dim]

    @property
    def id(self) -> tuple[str, int, str]:
        return (self.tensor.key, self.dim, self.virtual)


@dataclass
class RuleContext:
    """The view of one call node that an op rule works on."""

    node: fx.Node
    builder: CouplingBuilder
    inputs: list[TensorArg] = field(default_factory=list)
    outputs: list[TensorArg] = field(default_factory=list)
    accounted: set[tuple[str, int]] = field(default_factory=set)

    # ----------------------------------------------------------------- reading
    @property
    def out(self) -> TensorArg:
        """The single tensor output (rules for multi-output ops use :attr:`outputs`)."""
        return self.outputs[0]

    def arg(self, index: int, name: str | None = None) -> TensorArg | None:
        """Tensor argument by position (or keyword ``name``); ``None`` if absent or not a tensor."""
        value = self.raw(index, name)
        return self.builder.tensor(value) if isinstance(value, fx.Node) else None

    def tensors(self, index: int, name: str | None = None) -> list[TensorArg]:
        """A list-of-tensors argument (cat, stack)."""
        value = self.raw(index, name)
        items = value if isinstance(value, (list, tuple)) else [value]
        out = [self.builder.tensor(v) for v in items if isinstance(v, fx.Node)]
        return [t for t in out if t is not None]

    def raw(self, index: int, name: str | None = None, default: Any = None) -> Any:
        """An argument as written in the graph (a Node, a number, a list)."""
        if index < len(self.node.args):
            return self.node.args[index]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    @property
    def op(self) -> str:
        return op_name(self.node.target)

    # ----------------------------------------------------------------- saying
    def tie(self, a: Axis, b: Axis, *, tag: str | None = None) -> None:
        """``a`` and ``b`` must be permuted identically."""
        self._mark(a, b)
        self.builder.tie(self.node, a, b)
        if tag:
            self.tag(a, tag)

    def split(self, flat: Axis, factors: list[Axis]) -> None:
        """``flat`` is the row-major product of ``factors`` (outermost first)."""
        self._mark(flat, *factors)
        self.builder.split(self.node, flat, factors)

    def blocks(self, flat: Axis, sizes: list[int], name: str) -> list[Axis]:
        """Split ``flat`` into new virtual factor axes of ``sizes``; returns them."""
        parts = [Axis(flat.tensor, flat.dim, f"{name}{i}", s) for i, s in enumerate(sizes)]
        self.split(flat, parts)
        return parts

    def concat(self, flat: Axis, segments: list[Axis]) -> None:
        """``flat`` is ``segments`` laid end to end (segments never mix)."""
        self._mark(flat, *segments)
        self.builder.concat(self.node, flat, segments)

    def reduce(self, *axes: Axis) -> None:
        """The op's result does not change under any permutation of these input axes."""
        self._mark(*axes)

    def free(self, *axes: Axis) -> None:
        """The output is constant along these axes, so any permutation of them is harmless."""
        self._mark(*axes)

    def block(self, *axes: Axis, reason: str | None = None) -> None:
        """The op is not equivariant along these axes: they and all tied to them stay fixed."""
        self._mark(*axes)
        for a in axes:
            if a.size > 1:
                self.builder.block(self.node, a, reason or f"{self.op} is not equivariant along it")

    def tag(self, a: Axis, tag: str) -> None:
        """Attach a role (``heads``, ``qk``, ``vo``, ``linear_in``, ...) to ``a``'s class."""
        self.builder.tag(self.node, a, tag)

    # --------------------------------------------------------------- helpers
    def elementwise(self, inputs: Iterable[TensorArg | None], out: TensorArg) -> None:
        """Broadcasting pointwise op: dims aligned from the right are tied where sizes match."""
        for t in inputs:
            if t is None:
                continue
            for d in range(1, t.ndim + 1):
                a = t[-d]
                if d > out.ndim:
                    self.block(a, reason=f"{self.op} broadcasts it away")
                elif a.size == out.shape[-d]:
                    self.tie(a, out[-d])
                elif a.size == 1:
                    self.free(a)
                else:
                    self.block(a, out[-d])
        for a in out.axes():
            self._mark(a)

    def same(self, src: TensorArg, dst: TensorArg) -> None:
        """``dst`` is ``src`` elementwise (shapes equal): tie every dim."""
        for d in range(src.ndim):
            self.tie(src[d], dst[d])

    def _mark(self, *axes: Axis) -> None:
        for a in axes:
            if not a.virtual:
                self.accounted.add((a.tensor.key, a.dim))


def op_name(target: Any) -> str:
    """A short, stable name for a call target: ``aten.linear.default``, ``getitem``."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))
