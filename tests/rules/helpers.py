"""Shared tools for the op-rule tests: export a tiny module, find its nodes, read axis classes.

Golden axis maps read the :class:`~graphperm.analysis.coupling.Coupling` of a tiny module that
calls the op; semantic checks run :func:`graphperm.apply.verify` under random permutations and
insist that something really moved (a check that permutes nothing cannot fail).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from graphperm.analysis import Analysis, analyse
from graphperm.analysis.classes import Concat, Product
from graphperm.analysis.context import op_name
from graphperm.analysis.coupling import Coupling
from graphperm.apply import Indexer, permute_state, random_permutation, verify
from graphperm.trace import load_model, trace

SEEDS = (0, 1, 2)


def analysed(module: nn.Module, **inputs: torch.Tensor) -> Analysis:
    """Export ``module`` on keyword ``inputs`` and analyse it."""
    return analyse(trace(load_model(module), inputs))


# ------------------------------------------------------------------------------ graph lookup
def nodes(a: Analysis | Coupling, op: str) -> list[fx.Node]:
    """Call nodes whose target is ATen op ``op`` (``"linear"``, ``"conv1d"``, ``"getitem"``)."""
    coupling = a.coupling if isinstance(a, Analysis) else a
    out = []
    for n in coupling.program.graph.nodes:
        if n.op != "call_function":
            continue
        name = op_name(n.target)
        if name == op or name.split(".")[1:2] == [op]:
            out.append(n)
    return out


def node(a: Analysis | Coupling, op: str, index: int = 0) -> fx.Node:
    """The ``index``-th call of op ``op`` in graph order."""
    found = nodes(a, op)
    coupling = a.coupling if isinstance(a, Analysis) else a
    present = sorted({op_name(n.target) for n in coupling.program.graph.nodes if n.op != "output"})
    assert len(found) > index, f"no call #{index} of {op} in the graph; it has {present}"
    return found[index]


def arg(n: fx.Node, index: int) -> str:
    """Value key of the ``index``-th positional argument of ``n`` (a graph node)."""
    value = n.args[index]
    assert isinstance(value, fx.Node), f"argument {index} of {n.name} is {value!r}"
    return value.name


def param_key(a: Analysis | Coupling, state_key: str) -> str:
    """Placeholder value key of the saved tensor ``state_key`` (``"lin.weight"``)."""
    coupling = a.coupling if isinstance(a, Analysis) else a
    for key, target in coupling.state.items():
        if target == state_key:
            return key
    raise AssertionError(f"{state_key} is not a saved tensor of the graph: {coupling.state}")


# ------------------------------------------------------------------------------ axis classes
class Axes:
    """Root classes of axes of an analysed graph, by value key, parameter name or op node."""

    def __init__(self, a: Analysis) -> None:
        self.a = a
        self.c = a.coupling
        self.t = a.coupling.table

    def v(self, key: str | fx.Node, dim: int) -> int:
        """Class of axis ``dim`` of graph value ``key`` (a node or its name)."""
        name = key.name if isinstance(key, fx.Node) else key
        return self.c.cls(name, dim % self.c.tensors[name].ndim)

    def p(self, state_key: str, dim: int) -> int:
        """Class of axis ``dim`` of saved tensor ``state_key``."""
        return self.v(param_key(self.c, state_key), dim)

    def arg(self, n: fx.Node, index: int, dim: int) -> int:
        """Class of axis ``dim`` of ``n``'s positional tensor argument ``index``."""
        return self.v(arg(n, index), dim)

    def out(self, n: fx.Node, dim: int, element: int | None = None) -> int:
        """Class of axis ``dim`` of ``n``'s output (element ``element`` of a multi-output op)."""
        return self.v(n.name if element is None else f"{n.name}#{element}", dim)

    def size(self, c: int) -> int:
        return self.t.size(c)

    def fixed(self, c: int) -> list[str]:
        return self.t.fixed_reasons(c)

    def movable(self, c: int) -> bool:
        """Whether some leaf of ``c``'s block structure may move: it is not fixed, not composed
        (at any depth) into a fixed class, and has more than one element."""
        stack = [r for r in self.t.roots() if self.t.fixed_reasons(r)]
        blocked: set[int] = set()
        while stack:
            r = self.t.find(stack.pop())
            if r not in blocked:
                blocked.add(r)
                stack.extend(_parts(self.t.decomp(r)))
        leaves, stack = [], [self.t.find(c)]
        while stack:
            r = self.t.find(stack.pop())
            parts = _parts(self.t.decomp(r))
            stack.extend(parts)
            if not parts:
                leaves.append(r)
        return any(leaf not in blocked and self.t.size(leaf) > 1 for leaf in leaves)

    def factors(self, c: int) -> list[int]:
        """Sizes of the flat factor list of ``c`` (``[size]`` when it has no block structure)."""
        return [self.t.size(f) for f in self.t.factors(c)]

    def segments(self, c: int) -> list[int]:
        d = self.t.decomp(c)
        assert isinstance(d, Concat), f"class {c} is not a concatenation: {d}"
        return [self.t.size(s) for s in d.segments]

    def tags(self, c: int) -> set[str]:
        return self.c.tags_of(c)


def _parts(d: Product | Concat | None) -> tuple[int, ...]:
    if isinstance(d, Product):
        return d.factors
    if isinstance(d, Concat):
        return d.segments
    return ()


def assert_fixed_by(ax: Axes, c: int, *words: str) -> None:
    """Class ``c`` is fixed and some reason mentions every one of ``words``."""
    reasons = ax.fixed(c)
    assert reasons, f"class {c} (size {ax.size(c)}) is not fixed"
    assert any(all(w in r for w in words) for r in reasons), f"{words} not in {reasons}"


def group_of(a: Analysis, state_key: str, dim: int):
    """The permutation group that moves axis ``dim`` of ``state_key`` (None if it is fixed)."""
    for g in a.groups:
        if (state_key, dim) in g.tensors:
            return g
    return None


# ------------------------------------------------------------------------------ semantics
def assert_verifies(a: Analysis, seeds: tuple[int, ...] = SEEDS) -> None:
    """Random permutations of every group keep the outputs (up to their own permutation), and
    each one really moves some weight."""
    assert a.groups and any(g.parts for g in a.groups), "nothing may move: the check is vacuous"
    assert not a.coupling.failed, a.coupling.failed
    indexer = Indexer(a)
    state = a.traced.loaded.module.state_dict()
    for seed in seeds:
        perm = random_permutation(indexer.shapes(), seed=seed)
        assert any(perm.moved_fraction(g.name) > 0 for g in a.groups), f"seed {seed}: identity"
        permuted = permute_state(indexer, state, perm)
        assert any(not torch.equal(permuted[k], state[k]) for k in state), (
            f"seed {seed}: the permutation leaves every weight in place"
        )
        report = verify(a, perm=perm)
        assert report.ok, f"seed {seed}: {report.outputs}"


def verify_fails(a: Analysis, seeds: tuple[int, ...] = SEEDS) -> bool:
    """Whether some seed's random permutation changes the function (a wrong analysis)."""
    assert any(g.parts for g in a.groups)
    return any(not verify(a, seed=s).ok for s in seeds)
