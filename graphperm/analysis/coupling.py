"""Run the op rules over an exported graph and collect how every axis is coupled.

The result, :class:`Coupling`, holds the class of every axis of every value (parameters,
activations, outputs), the links each op made between axes (for the dependency check in
:mod:`graphperm.analysis.groups`), the role tags rules attached, and why axes were blocked.

Example:
    >>> from graphperm.trace import load_model, trace         # doctest: +SKIP
    >>> traced = trace(load_model("builtin:hubert-tiny"))     # doctest: +SKIP
    >>> coupling = couple(traced.program)                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from graphperm.analysis.classes import ClassTable, SizeMismatch
from graphperm.analysis.context import Axis, RuleContext, TensorArg, op_name
from graphperm.analysis.rules import rule_for

__all__ = ["ORIGIN_OPS", "Coupling", "CouplingBuilder", "Link", "couple", "nodes_in"]

log = logging.getLogger(__name__)

#: Ops that make new features, from weights or as a product of two activations: an activation's
#: *origins* (:meth:`CouplingBuilder.origins`) are the nearest of these above it.
ORIGIN_OPS = frozenset(
    f"aten.{n}"
    for n in """linear addmm mm bmm matmul baddbmm addbmm einsum conv1d conv2d conv3d convolution
_convolution conv_transpose1d conv_transpose2d scaled_dot_product_attention embedding""".split()
)


@dataclass(frozen=True)
class Link:
    """A relation an op made between two axes (a tie, or a flat axis and one of its parts)."""

    node: str
    a: int
    b: int
    owner_a: str
    owner_b: str


@dataclass
class Coupling:
    """How every axis of an exported program is coupled to every other."""

    program: ExportedProgram
    table: ClassTable
    tensors: dict[str, TensorArg]
    axis_class: dict[tuple[str, int, str], int]
    links: list[Link]
    tags: dict[int, set[str]]
    state: dict[str, str]  # placeholder value key -> state_dict key (parameters, saved buffers)
    inputs: dict[str, str]  # placeholder value key -> user input name
    unknown: dict[str, list[str]]  # op name -> node names with no rule
    failed: dict[str, str]  # node name -> why its rule failed (all its axes were blocked)
    module_of: dict[str, str] = field(default_factory=dict)  # node name -> module path
    # axis id -> {tag: name of the node whose rule set it}
    axis_tags: dict[tuple[str, int, str], dict[str, str]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)  # saved tensors the forward never reads

    def cls(self, key: str, dim: int) -> int:
        """The root class of axis ``dim`` of value ``key``."""
        return self.table.find(self.axis_class[(key, dim, "")])

    def classes(self, key: str) -> list[int]:
        """Root classes of every axis of value ``key``."""
        return [self.cls(key, d) for d in range(self.tensors[key].ndim)]

    def tags_of(self, c: int) -> set[str]:
        return self.tags.get(self.table.find(c), set())


class CouplingBuilder:
    """Walks an exported graph node by node, letting each op's rule relate its axes."""

    def __init__(self, program: ExportedProgram) -> None:
        self.program = program
        self.table = ClassTable()
        self.tensors: dict[str, TensorArg] = {}
        self.axis_class: dict[tuple[str, int, str], int] = {}
        self.owner: dict[int, str] = {}
        self.links: list[Link] = []
        self.raw_tags: list[tuple[int, str, tuple[str, int, str], str]] = []
        self.unknown: dict[str, list[str]] = defaultdict(list)
        self.failed: dict[str, str] = {}
        self.state: dict[str, str] = {}
        self.inputs: dict[str, str] = {}
        self._constant: set[str] = set()
        self._origins: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------ tensor views
    def tensor(self, node: fx.Node) -> TensorArg | None:
        """The single tensor value of ``node`` (None if it is not one)."""
        return self.tensors.get(node.name)

    def element(self, node: fx.Node, index: int) -> TensorArg | None:
        """Element ``index`` of a node that returns several tensors."""
        return self.tensors.get(f"{node.name}#{index}")

    def _register_values(self, node: fx.Node) -> list[TensorArg]:
        val = node.meta.get("val")
        is_param = node.name in self.state
        is_const = node.name in self._constant
        if isinstance(val, torch.Tensor):
            t = TensorArg(node.name, tuple(int(s) for s in val.shape), is_param, is_const)
            self.tensors[t.key] = t
            return [t]
        out = []
        if isinstance(val, (list, tuple)):
            for i, v in enumerate(val):
                if isinstance(v, torch.Tensor):
                    t = TensorArg(f"{node.name}#{i}", tuple(int(s) for s in v.shape))
                    self.tensors[t.key] = t
                    out.append(t)
        return out

    # ------------------------------------------------------------ relations
    def cls(self, axis: Axis) -> int:
        c = self.axis_class.get(axis.id)
        if c is None:
            c = self.table.new(axis.size)
            self.axis_class[axis.id] = c
            self.owner[c] = axis.tensor.key
        return c

    def tie(self, node: fx.Node, a: Axis, b: Axis) -> None:
        ca, cb = self.cls(a), self.cls(b)
        self.table.union(ca, cb)
        self.links.append(Link(node.name, ca, cb, self.owner[ca], self.owner[cb]))

    def split(self, node: fx.Node, flat: Axis, factors: list[Axis]) -> None:
        cf = self.cls(flat)
        parts = [self.cls(f) for f in factors]
        self.table.product(cf, parts)
        for p in parts:
            self.links.append(Link(node.name, cf, p, self.owner[cf], self.owner[p]))

    def concat(self, node: fx.Node, flat: Axis, segments: list[Axis]) -> None:
        cf = self.cls(flat)
        parts = [self.cls(s) for s in segments]
        self.table.concat(cf, parts)
        for p in parts:
            self.links.append(Link(node.name, cf, p, self.owner[cf], self.owner[p]))

    def block(self, node: fx.Node, axis: Axis, reason: str) -> None:
        self.table.fix(self.cls(axis), reason)

    def tag(self, node: fx.Node, axis: Axis, tag: str) -> None:
        self.raw_tags.append((self.cls(axis), tag, axis.id, node.name))

    def origins(self, node: fx.Node) -> frozenset[str]:
        """The feature-making nodes (:data:`ORIGIN_OPS`) and model inputs that ``node``'s value
        is computed from through other ops only (pointwise maps, views, normalisations).

        ``x + 0.044715 * x**3`` has the same origins on both sides; a skip connection
        ``x + W(f(x))`` does not.
        """
        return self._origins.get(node.name, frozenset())

    def _note_origins(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            mine = frozenset([node.name]) if node.name in self.inputs else frozenset()
        elif op_name(node.target).rsplit(".", 1)[0] in ORIGIN_OPS:
            mine = frozenset([node.name])
        else:
            found = [self._origins.get(n.name, frozenset()) for n in node.all_input_nodes]
            found = [f for f in found if f]
            mine = found[0] if len(found) == 1 else frozenset().union(*found)
        self._origins[node.name] = mine

    # ------------------------------------------------------------------ walk
    def build(self) -> Coupling:
        sig = self.program.graph_signature
        for spec in sig.input_specs:
            name = spec.arg.name
            if spec.kind == InputKind.PARAMETER or (
                spec.kind == InputKind.BUFFER and spec.persistent is not False
            ):
                self.state[name] = spec.target
            elif spec.kind == InputKind.USER_INPUT:
                self.inputs[name] = name
            else:
                self._constant.add(name)
        module_of: dict[str, str] = {}
        live = _live(self.program.graph)
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                for t in self._register_values(node):
                    for a in t.axes():
                        self.cls(a)
                    if node.name in self.inputs:
                        self._fix_all(t, f"it is an axis of the model input '{node.name}'")
                    elif node.name in self._constant:
                        self._fix_all(t, f"'{node.name}' is a constant not saved with the model")
                self._note_origins(node)
            elif node.op == "call_function" and node in live:
                # a value nothing reads (BART reads an embedding's last channel for its shape
                # only) cannot change what the model computes: it couples nothing
                module_of[node.name] = _module_path(node)
                self._note_origins(node)
                self._visit(node)
        tags: dict[int, set[str]] = defaultdict(set)
        axis_tags: dict[tuple[str, int, str], dict[str, str]] = defaultdict(dict)
        for c, tag, axis_id, node_name in self.raw_tags:
            tags[self.table.find(c)].add(tag)
            axis_tags[axis_id].setdefault(tag, node_name)
        unused = [
            self.state[n.name]
            for n in self.program.graph.nodes
            if n.op == "placeholder" and n.name in self.state and not n.users
        ]
        return Coupling(
            program=self.program,
            table=self.table,
            tensors=self.tensors,
            axis_class=self.axis_class,
            links=self.links,
            tags=dict(tags),
            state=self.state,
            inputs=self.inputs,
            unknown=dict(self.unknown),
            failed=self.failed,
            module_of=module_of,
            axis_tags=dict(axis_tags),
            unused=unused,
        )

    def _visit(self, node: fx.Node) -> None:
        outputs = self._register_values(node)
        inputs = [
            t
            for n in nodes_in((node.args, node.kwargs))
            if (t := self.tensors.get(n.name)) is not None
        ]
        op = op_name(node.target)
        for t in (*inputs, *outputs):
            for a in t.axes():
                self.cls(a)
        ctx = RuleContext(node=node, builder=self, inputs=inputs, outputs=outputs)
        rule = rule_for(op)
        if rule is None:
            if inputs or outputs:
                self.unknown[op].append(node.name)
            reason = f"no rule for {op}"
        else:
            try:
                rule(ctx)
                reason = f"{op} does not say how it moves"
            except (SizeMismatch, ValueError, IndexError, TypeError, AttributeError) as err:
                self.failed[node.name] = f"{op}: {err}"
                log.warning(
                    "the rule for %s failed at node %s (%s); its axes stay fixed",
                    op,
                    node.name,
                    err,
                )
                ctx.accounted.clear()
                reason = f"the rule for {op} failed"
        for t in (*inputs, *outputs):
            for a in t.axes():
                if (t.key, a.dim) not in ctx.accounted and a.size > 1:
                    self.table.fix(self.cls(a), reason)

    def _fix_all(self, t: TensorArg, reason: str) -> None:
        for a in t.axes():
            if a.size > 1:
                self.table.fix(self.cls(a), reason)


def _live(graph: fx.Graph) -> set[fx.Node]:
    """The nodes whose values reach the graph's outputs (mutated buffers included)."""
    live: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.op == "output" or any(u in live for u in node.users):
            live.add(node)
    return live


def couple(program: ExportedProgram) -> Coupling:
    """Relate every axis of ``program`` by running the op rules; see :class:`Coupling`."""
    return CouplingBuilder(program).build()


def nodes_in(obj: object) -> list[fx.Node]:
    """The graph nodes inside an argument structure (lists, tuples, dicts), each once."""
    out: list[fx.Node] = []

    def visit(x: object) -> None:
        if isinstance(x, fx.Node):
            if x not in out:
                out.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)

    visit(obj)
    return out


def _module_path(node: fx.Node) -> str:
    """The innermost module the node was called in, as a dotted path (``""`` for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _clean_path(path)


def _clean_path(path: str) -> str:
    """A module path as a user writes it.

    Example:
        >>> _clean_path("L['self'].encoder.layers[0]")
        'encoder.layers.0'
        >>> _clean_path("encoder.conv.parametrizations.weight.0")  # a weight-norm parametrization
        'encoder.conv'
    """
    # torch.export writes some paths as L['self'].encoder.layers[0] or with "_modules" hops
    path = path.replace("L['self'].", "").replace("L__self__.", "")
    for junk in ("._modules['", "['", "']", "]"):
        path = path.replace(junk, ".")
    parts = [p for p in path.replace("[", ".").split(".") if p]
    # torch.nn.utils.parametrize runs a parametrized tensor's functions as modules at
    # MODULE.parametrizations.NAME.i: the op belongs to MODULE
    if "parametrizations" in parts:
        parts = parts[: parts.index("parametrizations")]
    return ".".join(parts)
