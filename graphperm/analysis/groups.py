"""Permutation groups: the connected pieces of the coupling, named, typed and structured.

Classes that are composed of one another (a head-split axis and its heads and channels) form one
connected component; a component that touches a saved tensor and has a class that may move is a
:class:`PermutationGroup`. Its free leaf classes are its :class:`Part` s — ``heads``, ``qk``,
``vo`` for attention, ``blocks`` and ``channels`` otherwise — each drawn as its own permutation.
An inner part may be permuted differently inside each block of its outer part (per-head channel
orders) when every op that touches it acts block by block; this is checked, not assumed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx

from graphperm.analysis.classes import Concat, Product
from graphperm.analysis.coupling import Coupling

__all__ = ["KINDS", "PART_NAMES", "FixedAxis", "Part", "PermutationGroup", "build_groups"]

KINDS = ("conv", "ffn", "attn", "residual", "other")
PART_NAMES = ("heads", "qk", "vo", "blocks", "channels")


@dataclass(frozen=True)
class Part:
    """One independently drawn permutation inside a group."""

    name: str
    size: int
    cls: int
    outer: str | None = None  # the part whose (new) index selects this part's permutation


@dataclass(frozen=True)
class Site:
    """A place where a group's channels can be measured: axis ``dim`` of graph value ``key``."""

    key: str
    dim: int
    module: str
    role: str  # "pre" (after the producing op, before the nonlinearity), "post" (consumer input)
    part: str = ""  # the part whose statistics it gives ("" = the whole group)


@dataclass(frozen=True)
class PermutationGroup:
    """A set of tensor axes that must move together, and how they may move."""

    name: str
    kind: str
    size: int
    parts: tuple[Part, ...]
    tensors: tuple[tuple[str, int], ...]  # (state_dict key, dim) moved by this group
    classes: frozenset[int] = field(repr=False)
    sites: tuple[Site, ...] = ()

    @property
    def heads(self) -> int | None:
        """Number of attention heads (``None`` for groups that have none)."""
        return next((p.size for p in self.parts if p.name == "heads"), None)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    @property
    def structure(self) -> str:
        """Block structure in words: ``12 heads × (qk 64, vo 64)``, ``16 blocks × 48``, ``3072``."""
        outer = [
            p for p in self.parts if not p.outer and any(q.outer == p.name for q in self.parts)
        ]
        if not outer:
            return " + ".join(_fmt_part(p) for p in self.parts)
        o = outer[0]
        inner = [p for p in self.parts if p.outer == o.name]
        rest = [p for p in self.parts if p is not o and p not in inner]
        text = f"{o.size} {o.name} × "
        text += (
            f"({', '.join(_fmt_part(p) for p in inner)})" if len(inner) > 1 else str(inner[0].size)
        )
        return " + ".join([text, *(_fmt_part(p) for p in rest)])


@dataclass(frozen=True)
class FixedAxis:
    """An axis of a saved tensor that no permutation may move, and why."""

    key: str
    dim: int
    size: int
    reasons: tuple[str, ...]


def _fmt_part(p: Part) -> str:
    return f"{p.name} {p.size}" if p.name != "channels" else str(p.size)


# ----------------------------------------------------------------------------- building
def build_groups(coupling: Coupling) -> tuple[list[PermutationGroup], list[FixedAxis], dict]:
    """Components of the coupling that can move: groups, the fixed axes, and part dependencies.

    Returns ``(groups, fixed_axes, deps)`` where ``deps`` maps an inner leaf class to the outer
    leaf class its permutation is indexed by.
    """
    table = coupling.table
    roots = table.roots()
    children = {r: _parts_of(table.decomp(r)) for r in roots}
    fixed = _effectively_fixed(coupling, roots, children)
    leaves_of = _leaf_sets(roots, children)

    # A class and its parts move together, unless a part is fixed: a fixed part (a rotary
    # embedding's channels, shared by every layer) joins nothing, as identity is the same
    # permutation for everyone.
    graph = nx.Graph()
    graph.add_nodes_from(roots)
    for r, kids in children.items():
        if r not in fixed:
            graph.add_edges_from((r, k) for k in kids if k not in fixed)

    state_axes: dict[int, list[tuple[str, int]]] = defaultdict(list)
    unused = set(coupling.unused)
    for key, target in coupling.state.items():
        if target in unused:
            continue
        for d in range(coupling.tensors[key].ndim):
            state_axes[coupling.cls(key, d)].append((target, d))

    deps = _dependencies(coupling, roots, leaves_of, fixed)
    first_seen = _first_seen(coupling)
    drafts = []
    fixed_axes = []
    for comp in nx.connected_components(graph):
        tensors = sorted(ax for c in comp for ax in state_axes.get(c, []))
        if not tensors:
            continue
        free = sorted(c for c in comp if c not in children or not children[c])
        free = [c for c in free if c not in fixed and table.size(c) > 1]
        if not free:
            for c in comp:
                for key, d in state_axes.get(c, []):
                    reasons = _reasons(coupling, c, children)
                    fixed_axes.append(FixedAxis(key, d, table.size(c), tuple(reasons)))
            continue
        drafts.append(_draft(coupling, comp, free, tensors, deps, children, first_seen))
    groups = _name_groups(coupling, drafts)
    fixed_axes.sort(key=lambda f: (f.key, f.dim))
    return groups, fixed_axes, deps


def _parts_of(d: Product | Concat | None) -> list[int]:
    if isinstance(d, Product):
        return list(d.factors)
    if isinstance(d, Concat):
        return list(d.segments)
    return []


def _effectively_fixed(coupling: Coupling, roots: list[int], children: dict) -> set[int]:
    """Fixed classes, every class composed into a fixed class (its parts must be identity), and
    every class composed only of fixed parts (a rotary embedding's channels: two halves, both
    fixed, shared by every layer), which can only stay in place too."""
    table = coupling.table
    out: set[int] = set()
    stack = [r for r in roots if table.fixed_reasons(r)]
    while stack:
        c = stack.pop()
        if c in out:
            continue
        out.add(c)
        stack.extend(children.get(c, []))
    grew = True
    while grew:
        grew = False
        for c, kids in children.items():
            if kids and c not in out and all(k in out for k in kids):
                out.add(c)
                grew = True
    return out


def _leaf_sets(roots: list[int], children: dict) -> dict[int, frozenset[int]]:
    memo: dict[int, frozenset[int]] = {}

    def leaves(c: int) -> frozenset[int]:
        if c not in memo:
            kids = children.get(c, [])
            memo[c] = frozenset([c]) if not kids else frozenset().union(*(leaves(k) for k in kids))
        return memo[c]

    return {r: leaves(r) for r in roots}


def _reasons(coupling: Coupling, c: int, children: dict) -> list[str]:
    """Why class ``c`` cannot move: its own reasons, or those of a class it is composed into."""
    table = coupling.table
    if table.fixed_reasons(c):
        return table.fixed_reasons(c)
    parents = [r for r, kids in children.items() if c in kids]
    for p in parents:
        if r := _reasons(coupling, p, children):
            return r
    for k in children.get(c, []):  # a composite class whose parts are all fixed
        if r := table.fixed_reasons(k):
            return r
    return ["it has a single element"] if table.size(c) == 1 else ["it is fixed"]


def _dependencies(coupling: Coupling, roots, leaves_of, fixed) -> dict[int, int]:
    """Inner leaves whose permutation may differ per block of the leaf just outside them.

    Leaf ``L`` may depend on ``O`` when (1) wherever ``L`` is a factor, the factor right before it
    is ``O``; (2) every tensor that holds ``L`` also holds ``O``; (3) every op that ties ``L``
    between two tensors also relates ``O`` between the same two tensors (it acts block by block).
    """
    table = coupling.table
    candidate: dict[int, int | None] = {}
    for r in roots:
        d = table.decomp(r)
        if not isinstance(d, Product):
            continue
        flat = table.factors(r)
        for i, f in enumerate(flat):
            if table.decomp(f) is not None:
                continue
            outer = flat[i - 1] if i > 0 and table.decomp(flat[i - 1]) is None else None
            if f in candidate and candidate[f] != outer:
                candidate[f] = None
            else:
                candidate[f] = outer
    candidate = {k: v for k, v in candidate.items() if v is not None and k not in fixed}
    if not candidate:
        return {}
    # (2) every tensor that holds L holds O
    for key, t in coupling.tensors.items():
        held = set()
        for d in range(t.ndim):
            held |= leaves_of.get(coupling.cls(key, d), frozenset())
        for leaf in [leaf for leaf in candidate if leaf in held]:
            if candidate[leaf] not in held:
                del candidate[leaf]
    # (3) every tie of L comes with O related between the same two tensors by the same op,
    # directly or through the op's other tensors (q and k both share out's heads in sdpa)
    by_node: dict[str, list] = defaultdict(list)
    for link in coupling.links:
        by_node[link.node].append(link)
    for links in by_node.values():
        for link in links:
            leaf = table.find(link.a)
            if leaf not in candidate or table.find(link.b) != leaf:
                continue
            outer = candidate[leaf]
            linked = nx.Graph()
            for other in links:
                la = leaves_of.get(table.find(other.a), frozenset())
                lb = leaves_of.get(table.find(other.b), frozenset())
                if outer in la and outer in lb:
                    linked.add_edge(other.owner_a, other.owner_b)
            a, b = link.owner_a, link.owner_b
            if a != b and not (a in linked and b in linked and nx.has_path(linked, a, b)):
                del candidate[leaf]
    return candidate


def _first_seen(coupling: Coupling) -> dict[int, tuple[int, str]]:
    """For each root class, the first graph node (order, module path) whose value carries it."""
    out: dict[int, tuple[int, str]] = {}
    order = {n.name: i for i, n in enumerate(coupling.program.graph.nodes)}
    for key, t in coupling.tensors.items():
        node = key.split("#")[0]
        if node not in coupling.module_of:
            continue
        for d in range(t.ndim):
            c = coupling.cls(key, d)
            here = (order[node], coupling.module_of[node])
            if c not in out or here < out[c]:
                out[c] = here
    return out


@dataclass
class _Draft:
    comp: frozenset[int]
    kind: str
    size: int
    parts: list[Part]
    tensors: list[tuple[str, int]]
    order: int
    first_module: str


def _draft(coupling, comp, free, tensors, deps, children, first_seen) -> _Draft:
    table = coupling.table
    ancestors: dict[int, set[int]] = defaultdict(set)
    for r in comp:
        for k in children.get(r, []):
            ancestors[k].add(r)

    def all_tags(c: int, seen: frozenset = frozenset()) -> set[str]:
        tags = set(coupling.tags_of(c))
        for a in ancestors[c] - seen:
            tags |= all_tags(a, seen | {c})
        return tags

    comp_tags = set().union(*(coupling.tags_of(c) for c in comp))
    free_set = set(free)
    names: dict[int, str] = {}
    for leaf in free:
        tags = all_tags(leaf)
        role = next((t for t in ("heads", "qk", "vo") if t in tags), None)
        if role is None:
            role = "blocks" if any(deps.get(x) == leaf for x in free_set) else "channels"
        names[leaf] = role
    _dedupe(names)
    parts = [
        Part(names[c], table.size(c), c, names.get(deps[c]) if deps.get(c) in names else None)
        for c in free
    ]
    parts.sort(key=lambda p: (PART_NAMES.index(p.name.rstrip("0123456789")), p.name))
    # a skip connection counts where it adds to a stream that weights read, not where it adds
    # a position bias to attention scores (there it meets only the heads)
    if not any("skip" in (t := coupling.tags_of(c)) and t & {"linear_in", "conv_in"} for c in comp):
        comp_tags.discard("skip")
    kind = _kind(comp_tags, {p.name.rstrip("0123456789") for p in parts})
    sizes = [table.size(c) for c in comp if not isinstance(table.decomp(c), Concat)]
    seen = [first_seen[c] for c in comp if c in first_seen]
    order, module = min(seen) if seen else (10**9, "")
    return _Draft(frozenset(comp), kind, max(sizes), parts, tensors, order, module)


def _kind(tags: set[str], parts: set[str]) -> str:
    """A group's kind, from what its axes connect (the tags the op rules left on them).

    - ``residual``: a stream that a skip connection adds to (``x + f(x)`` where ``f`` makes new
      features with weights: the rule for ``add`` tells a skip from a pointwise function of one
      value such as ``gelu_new``'s ``x + 0.044715·x³``); it outranks the rest, since a residual
      stream that is also split into heads (WavLM's gated position bias) is still the stream;
    - ``attn``: heads, or query–key / value channels, of a product of two activations;
    - ``conv``: channels made or read by a convolution;
    - ``ffn``: channels made by a weight and read by another weight (a hidden layer);
    - ``other``: the rest (a pooler's output, channels no weight reads).

    Example:
        >>> _kind({"linear_in", "linear_out"}, {"channels"})
        'ffn'
        >>> _kind({"skip", "linear_in", "qk"}, {"heads", "channels"})
        'residual'
    """
    if "skip" in tags:
        return "residual"
    if parts & {"heads", "qk", "vo"}:
        return "attn"
    if tags & {"conv_out", "conv_in"}:
        return "conv"
    if {"linear_in", "linear_out"} <= tags:
        return "ffn"
    return "other"


def _dedupe(names: dict[int, str]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for n in names.values():
        counts[n] += 1
    index: dict[str, int] = defaultdict(int)
    for c in sorted(names):
        n = names[c]
        if counts[n] > 1:
            names[c] = f"{n}{index[n]}"
            index[n] += 1


def _name_groups(coupling: Coupling, drafts: list[_Draft]) -> list[PermutationGroup]:
    """Deterministic, readable names from module paths (see the module docstring)."""
    drafts.sort(key=lambda d: (d.order, d.kind, d.size))
    common = [_common_module([k for k, _ in d.tensors]) for d in drafts]
    taken: dict[str, int] = defaultdict(int)
    for c in common:
        taken[c] += 1
    names = []
    for i, (d, c) in enumerate(zip(drafts, common)):
        inside = any(
            o.first_module == c or o.first_module.startswith(c + ".")
            for j, o in enumerate(drafts)
            if j != i
        )
        if c and taken[c] == 1 and not inside:
            names.append(c)
        elif d.kind == "residual" and not c:
            names.append("residual")
        else:
            names.append(d.first_module or d.kind)
    final: list[str] = []
    count: dict[str, int] = defaultdict(int)
    for n in names:
        count[n] += 1
    used: dict[str, int] = defaultdict(int)
    for n in names:
        if count[n] > 1:
            final.append(f"{n}#{used[n]}")
            used[n] += 1
        else:
            final.append(n)
    return [
        PermutationGroup(
            name=name,
            kind=d.kind,
            size=d.size,
            parts=tuple(d.parts),
            tensors=tuple(d.tensors),
            classes=d.comp,
        )
        for name, d in zip(final, drafts)
    ]


def module_of_key(key: str) -> str:
    """The module path of a state_dict key (``a.b.weight`` → ``a.b``; parametrizations folded)."""
    path = key.rsplit(".", 1)[0] if "." in key else ""
    if ".parametrizations." in f".{path}.":
        path = path.split(".parametrizations")[0]
    return path


def _common_module(keys: list[str]) -> str:
    paths = [module_of_key(k) for k in keys]
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    prefix = []
    for column in zip(*parts):
        if len(set(column)) > 1:
            break
        prefix.append(column[0])
    return ".".join(prefix)
