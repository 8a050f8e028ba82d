"""Which exact transforms each part admits: permutations only, or any orthogonal matrix.

Every part may be permuted (that is what the coupling proves). A part may also be *rotated*
(its units mixed by an orthogonal matrix ``R``: ``new = old @ R`` along its axes) when every op
that touches its axis treats rotations as it treats permutations. Each op family declares how it
does (:data:`graphperm.analysis.rules.ROTATION_KINDS`, next to its coupling rules): linear maps
contract or produce the axis, views move values around, sums of operands that all carry the axis
commute with ``R``; a nonlinearity, a per-unit gain, a softmax over it, or an axis used as a batch
of two operands does not. Two conditions are weaker than "never":

- a constant added along the axis (a scalar, a broadcast operand), a sum or mean over it, and a
  LayerNorm's centring commute with ``R`` only if ``R`` keeps the all-ones direction
  (``R @ 1 = 1``): the part is ``orth`` with ``keeps_ones``, and solvers and random draws
  respect it;
- a normalisation over the axis (LayerNorm, RMSNorm) commutes only without its per-unit gain and
  bias, so those must be *folded* into the linear layers that read its output (``W diag(g)``,
  ``c + W b``). That is possible when every reader, through views, is a linear layer with its own
  weight (``aten.linear``, or ``aten.addmm``/``aten.mm`` with an ``(in, out)`` weight: GPT-2's
  ``Conv1D``); where a reader has no bias (an LM head), the norm keeps its bias as ``b / g``,
  which rotates with the axis like any vector on it. The folds are recorded (:class:`Fold`)
  and applied before any rotation (:mod:`graphperm.apply.fold`). The folded model is the same
  class with gains 1 (and biases 0 where the readers took them). A reader whose weight is tied
  to another use (an LM head tied to the input embedding) cannot take a gain.

A model output that carries the axis is fine (the merged model's outputs live in A's basis, and
verification maps them), so a residual stream is ``orth`` exactly when no nonlinearity writes it
and every norm that reads it can be folded: pre-LN encoders with a head (ViT with its classifier)
come out ``orth``; post-LN ones (BERT, HuBERT), streams written by GELU (Whisper's conv front
end, HuBERT's positional conv), and a final LayerNorm whose output is returned come out ``perm``.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> a = analyse(trace(load_model("builtin:bert-tiny")))
    >>> attn = a.group("encoder.layer.0.attention")
    >>> [(p.name, a.symmetry(attn.name, p.name).family) for p in attn.parts]
    [('heads', 'perm'), ('qk', 'orth'), ('vo', 'orth')]
    >>> a.symmetry(a.groups[0].name, "channels").why  # doctest: +ELLIPSIS
    '...'
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from torch import fx

from graphperm.analysis.classes import Concat, Product
from graphperm.analysis.context import op_name
from graphperm.analysis.coupling import Coupling, nodes_in
from graphperm.analysis.groups import PermutationGroup
from graphperm.analysis.rules import rotation_of

__all__ = ["FAMILIES", "Fold", "Reader", "Symmetry", "find_symmetries"]

FAMILIES = ("perm", "orth")

_ADDITIVE_ARGS = {  # arguments of linear ops that are added to the result (biases, masks)
    "aten.linear": (2,),
    "aten.addmm": (0,),
    "aten.baddbmm": (0,),
    "aten.addbmm": (0,),
    "aten.conv1d": (2,),
    "aten.conv2d": (2,),
    "aten.conv3d": (2,),
    "aten.convolution": (2,),
    "aten._convolution": (2,),
    "aten.scaled_dot_product_attention": (3,),
}
_SELECTORS = {
    "aten.where": (0,),
    "aten.masked_fill": (1,),
    "aten.masked_fill_": (1,),
    # the list of index tensors (or masks) that picks the positions written
    "aten.index_put": (1,),
    "aten.index_put_": (1,),
    "aten._index_put_impl_": (1,),
    "aten._unsafe_index_put": (1,),
}
_DIVIDES = ("aten.div", "aten.true_divide", "aten.divide", "aten.div_")


class Reader(NamedTuple):
    """A linear layer that reads a norm's output: its weight and bias (state dict keys), and
    the weight's input axis (1 for ``nn.Linear``'s ``(out, in)``, 0 for GPT-2's ``Conv1D``,
    which stores ``(in, out)`` and traces to ``aten.addmm``)."""

    weight: str
    bias: str | None
    in_dim: int = 1


@dataclass(frozen=True)
class Fold:
    """A norm whose gain and bias move into the linear layers that read it (state dict keys)."""

    node: str
    weight: str | None
    bias: str | None
    readers: tuple[Reader, ...]  # plain (weight, bias) pairs read as Reader(weight, bias)
    keep_bias: bool = False  # the bias stays in the norm (as bias / gain): a reader has none


@dataclass(frozen=True)
class Symmetry:
    """The widest family of exact transforms of one part, and what it takes."""

    family: str  # "perm" or "orth"
    keeps_ones: bool = False  # an orthogonal transform must map the all-ones vector to itself
    folds: tuple[Fold, ...] = ()
    why: str = ""  # why the family is not wider


def find_symmetries(
    coupling: Coupling, groups: list[PermutationGroup]
) -> dict[tuple[str, str], Symmetry]:
    """The :class:`Symmetry` of every part of every group, keyed by ``(group, part)``."""
    walk = _Walk(coupling)
    walk.run()
    out = {}
    for g in groups:
        for p in g.parts:
            out[(g.name, p.name)] = walk.symmetry(coupling.table.find(p.cls))
    return out


class _Walk:
    def __init__(self, coupling: Coupling) -> None:
        self.c = coupling
        self.table = coupling.table
        self.broken: dict[int, str] = {}  # leaf -> first reason rotations break
        self.ones: set[int] = set()
        self.norms: dict[int, list[fx.Node]] = defaultdict(list)
        self._leaves: dict[int, frozenset[int]] = {}
        self._folds: dict[str, Fold | str] = {}
        self.state_users = {
            n.name: len(n.users)
            for n in coupling.program.graph.nodes
            if n.op == "placeholder" and n.name in coupling.state
        }

    # ---------------------------------------------------------------- classes
    def leaves(self, c: int) -> frozenset[int]:
        c = self.table.find(c)
        if c not in self._leaves:
            d = self.table.decomp(c)
            if d is None:
                out = frozenset([c])
            else:
                kids = d.factors if isinstance(d, Product) else d.segments
                assert isinstance(d, (Product, Concat))
                out = frozenset().union(*(self.leaves(k) for k in kids))
            self._leaves[c] = out
        return self._leaves[c]

    def carried(self, key: str, dims: list[int] | None = None) -> frozenset[int]:
        """Leaves on the axes (of size > 1) of value ``key``."""
        t = self.c.tensors.get(key)
        if t is None:
            return frozenset()
        dims = range(t.ndim) if dims is None else dims
        found = [self.leaves(self.c.cls(key, d)) for d in dims if t.shape[d] > 1]
        return frozenset().union(*found)

    def outputs(self, node: fx.Node) -> list[str]:
        if node.name in self.c.tensors:
            return [node.name]
        return [k for k in self.c.tensors if k.startswith(f"{node.name}#")]

    # ------------------------------------------------------------------ walk
    def run(self) -> None:
        for node in self.c.program.graph.nodes:
            if node.op == "call_function":
                self.visit(node)

    def visit(self, node: fx.Node) -> None:
        op = op_name(node.target)
        family = op.rsplit(".", 1)[0] if op.count(".") >= 2 else op
        kind = rotation_of(op)
        args = {i: a for i, a in enumerate(node.args)}
        ins = [n.name for n in nodes_in((node.args, node.kwargs)) if n.name in self.c.tensors]
        outs = self.outputs(node)
        every = frozenset().union(*(self.carried(k) for k in (*ins, *outs)))
        where = f"{op} in {self.c.module_of.get(node.name) or '<root>'}"
        if kind == "move":
            return
        if kind == "linear":
            self._linear(node, family, ins, outs, where)
        elif kind == "add":
            self._add(node, family, ins, outs, args, where)
        elif kind == "scale":
            mine = [self.carried(k) for k in ins]
            for leaf in every:
                if sum(leaf in m for m in mine) > 1:
                    self.breaks(leaf, f"{where} multiplies two operands along it")
            if family in _DIVIDES and isinstance(args.get(1), fx.Node):
                for leaf in self.carried(args[1].name):
                    self.breaks(leaf, f"{where} divides by values along it")
        elif kind == "sum":
            x = ins[0] if ins else None
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            t = self.c.tensors.get(x) if x else None
            if t is not None:
                dims = list(range(t.ndim)) if dims in (None, []) else dims
                dims = [int(d) % t.ndim for d in ([dims] if isinstance(dims, int) else dims)]
                self.ones |= self.carried(x, dims)
        elif kind == "norm":
            # the gain must be folded away; then an RMSNorm's unit gain is rotated into itself
            # only if R keeps the all-ones direction, as a LayerNorm's centring needs anyway
            x = node.args[0].name
            t = self.c.tensors[x]
            shape = list(node.args[1])
            for leaf in self.carried(x, list(range(t.ndim - len(shape), t.ndim))):
                self.norms[leaf].append(node)
                self.ones.add(leaf)
        elif kind == "fill":
            self.ones |= every
        else:
            for leaf in every:
                self.breaks(leaf, f"{where} is not linear along it")

    def breaks(self, leaf: int, why: str) -> None:
        self.broken.setdefault(leaf, why)

    def _linear(self, node: fx.Node, family: str, ins: list[str], outs: list[str], where: str):
        additive = {
            node.args[i].name
            for i in _ADDITIVE_ARGS.get(family, ())
            if i < len(node.args) and isinstance(node.args[i], fx.Node)
        }
        main = [k for k in ins if k not in additive]
        out = frozenset().union(*(self.carried(k) for k in outs))
        if family.startswith(("aten.conv", "aten._conv")):
            pos = 8 if family.endswith("convolution") else 6
            groups = node.args[pos] if len(node.args) > pos else 1
            if groups != 1:
                for leaf in frozenset().union(*(self.carried(k) for k in main), out):
                    self.breaks(leaf, f"{where} is a grouped convolution")
        for leaf in self._batch_leaves(node, family, main):
            self.breaks(leaf, f"{where} uses it as a batch axis of two operands")
        for k in additive:
            for leaf in self.carried(k) - out:
                self.breaks(leaf, f"{where} adds a tensor along it that the result does not carry")

    def _batch_leaves(self, node: fx.Node, family: str, main: list[str]) -> frozenset[int]:
        """Leaves on axes that two operands share as a batch (``bmm``'s leading axes, an
        einsum index kept in the output): a rotation there would mix separate products."""
        if family in (
            "aten.linear",
            "aten.addmm",
            "aten.mm",
            "aten.embedding",
        ) or family.startswith(("aten.conv", "aten._conv")):
            return frozenset()  # a weight has no batch axes
        if family == "aten.einsum":
            spec = str(node.args[0]).replace(" ", "")
            lhs, _, rhs = spec.partition("->")
            terms = lhs.split(",")
            if "." in spec or len(terms) != len(main):
                return frozenset().union(*(self.carried(k) for k in main))
            found: dict[str, list[frozenset[int]]] = defaultdict(list)
            for term, key in zip(terms, main):
                for d, letter in enumerate(term):
                    found[letter].append(self.carried(key, [d]))
            shared = [
                v for letter, v in found.items() if len(v) > 2 or (len(v) == 2 and letter in rhs)
            ]
            return frozenset().union(*(x for v in shared for x in v))
        # matmul-like: everything but the last two axes of each operand is a batch axis
        batch = []
        for key in main:
            t = self.c.tensors[key]
            batch.append(self.carried(key, list(range(max(t.ndim - 2, 0)))))
        seen: set[int] = set()
        shared: set[int] = set()
        for b in batch:
            shared |= seen & b
            seen |= b
        return frozenset(shared)

    def _add(self, node, family, ins, outs, args, where) -> None:
        positions = _SELECTORS.get(family, ())
        selectors = {n.name for i in positions for n in nodes_in(args.get(i))}
        operands = [self.carried(k) for k in ins if k not in selectors]
        every = frozenset().union(*operands, *(self.carried(k) for k in outs))
        for k in selectors:
            for leaf in self.carried(k):
                self.breaks(leaf, f"{where} selects by a mask that varies along it")
        constant = any(
            isinstance(a, numbers.Number) and not isinstance(a, bool) and a != 0
            for i, a in args.items()
            if i not in positions
        )
        for leaf in every:
            if constant or not all(leaf in o for o in operands):
                self.ones.add(leaf)

    # --------------------------------------------------------------- verdict
    def symmetry(self, leaf: int) -> Symmetry:
        if leaf in self.broken:
            return Symmetry("perm", why=self.broken[leaf])
        folds = []
        for node in self.norms.get(leaf, []):
            fold = self.fold(node)
            if isinstance(fold, str):
                return Symmetry("perm", why=fold)
            if fold.weight or fold.bias:
                folds.append(fold)
        return Symmetry("orth", keeps_ones=leaf in self.ones, folds=tuple(folds))

    def fold(self, node: fx.Node) -> Fold | str:
        """How to fold ``node``'s gain and bias into its readers, or why it cannot be done."""
        if node.name not in self._folds:
            self._folds[node.name] = self._find_fold(node)
        return self._folds[node.name]

    def _find_fold(self, node: fx.Node) -> Fold | str:
        where = f"the norm in {self.c.module_of.get(node.name) or '<root>'}"
        w = node.args[2] if len(node.args) > 2 else None
        b = node.args[3] if len(node.args) > 3 and op_name(node.target).find("rms") < 0 else None
        w = w if isinstance(w, fx.Node) else None
        b = b if isinstance(b, fx.Node) else None
        if w is None and b is None:
            return Fold(node.name, None, None, ())
        for p in (w, b):
            if p is not None and p.name not in self.c.state:
                return f"{where} takes its gain or bias from a computed value"
        x = node.args[0].name
        normed = self.leaves(self.c.cls(x, self.c.tensors[x].ndim - 1))
        readers: list[Reader] = []
        frontier = [node]
        while frontier:
            cur = frontier.pop()
            for user in cur.users:
                op = op_name(user.target)
                if op == "output":
                    return f"{where} is returned as a model output, so its gain cannot be folded"
                if op == "getitem":
                    if user.args[1] == 0:
                        frontier.append(user)
                    continue
                if rotation_of(op) == "move" and user.args and user.args[0] is cur:
                    frontier.append(user)
                    continue
                layer = _linear_layer(op, user, cur)
                if layer is not None:
                    weight, bias, in_dim = layer
                    if (
                        not isinstance(weight, fx.Node)
                        or weight.name not in self.c.state
                        or self.state_users.get(weight.name) != 1
                        or self.leaves(self.c.cls(weight.name, in_dim)) != normed
                        or (bias is not None and bias.name not in self.c.state)
                    ):
                        return f"{where} feeds {user.name}, whose weight it cannot be folded into"
                    readers.append(
                        Reader(
                            self.c.state[weight.name],
                            self.c.state[bias.name] if bias is not None else None,
                            in_dim,
                        )
                    )
                    continue
                return f"{where} feeds {op} (only linear layers can absorb its gain)"
        return Fold(
            node.name,
            self.c.state[w.name] if w is not None else None,
            self.c.state[b.name] if b is not None else None,
            tuple(readers),
            # a reader without a bias (an LM head) cannot take the norm's bias: it stays in
            # the norm, divided by the gain, and rotates with the axis like any vector on it
            keep_bias=b is not None and any(r.bias is None for r in readers),
        )


def _linear_layer(op: str, user: fx.Node, cur: fx.Node) -> tuple | None:
    """``(weight, bias, weight's input axis)`` when ``user`` is a linear layer applied to
    ``cur``: ``aten.linear(x, W, b)`` (``W`` is ``(out, in)``), ``aten.addmm(b, x, W)`` or
    ``aten.mm(x, W)`` (GPT-2's ``Conv1D``: ``W`` is ``(in, out)``); else None."""
    args = user.args
    if op.startswith("aten.linear") and args[0] is cur:
        bias = args[2] if len(args) > 2 else None
        return args[1], bias if isinstance(bias, fx.Node) else None, 1
    if op.startswith("aten.addmm") and len(args) > 2 and args[1] is cur:
        extra = {k: v for k, v in user.kwargs.items() if v != 1}  # beta/alpha scale the terms
        bias = args[0] if isinstance(args[0], fx.Node) and not extra else None
        return (args[2], bias, 0) if bias is not None else None
    if op.startswith("aten.mm") and len(args) > 1 and args[0] is cur:
        return args[1], None, 0
    return None
