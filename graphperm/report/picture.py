"""Pictures of what couples to what: Graphviz DOT, and an SVG coupling matrix.

The SVG needs no Graphviz: rows are the modules that own weights (in the order the forward pass
uses them), columns are the permutation groups, and a coloured cell says that the group moves
that module's weights — ``o`` along its output units, ``i`` along its input units, ``·`` a
per-channel vector (norm, bias). Reading down a column shows a group crossing layers (the residual
stream touches every layer); reading across a row shows what a module couples together.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> svg = coupling_svg(analyse(trace(load_model("builtin:hubert-tiny"))))
    >>> svg.startswith("<svg")
    True
"""

from __future__ import annotations

from collections import defaultdict
from html import escape

from graphperm.analysis import Analysis
from graphperm.analysis.groups import module_of_key

__all__ = ["KIND_COLORS", "axis_roles", "coupling_dot", "coupling_svg"]

KIND_COLORS = {
    "conv": "#4e79a7",
    "ffn": "#59a14f",
    "attn": "#e15759",
    "residual": "#f28e2b",
    "other": "#9c755f",
}


def axis_roles(analysis: Analysis) -> dict[tuple[str, int], str]:
    """``(state key, dim) -> "o" | "i" | "·"``: does a weight produce, consume or scale units."""
    c = analysis.coupling
    axis_of = {cls: ax for ax, cls in c.axis_class.items()}
    out: dict[tuple[str, int], str] = {}
    for link in c.links:
        for mine, other in ((link.a, link.b), (link.b, link.a)):
            key, dim, virtual = axis_of[mine]
            if key not in c.state or virtual:
                continue
            tags = set(c.axis_tags.get(axis_of[other], {}))
            if tags & {"linear_out", "conv_out"}:
                out[(c.state[key], dim)] = "o"
            elif tags & {"linear_in", "conv_in"}:
                out.setdefault((c.state[key], dim), "i")
    return out


def _modules(analysis: Analysis) -> list[str]:
    """Modules owning saved tensors, in the order the graph first reads them."""
    order: list[str] = []
    for node in analysis.traced.program.graph.nodes:
        target = analysis.coupling.state.get(node.name)
        if target is not None and node.users:
            m = module_of_key(target) or "<root>"
            if m not in order:
                order.append(m)
    return order


def _cells(analysis: Analysis) -> dict[tuple[str, str], set[str]]:
    roles = axis_roles(analysis)
    cells: dict[tuple[str, str], set[str]] = defaultdict(set)
    for g in analysis.groups:
        for key, dim in g.tensors:
            cells[(module_of_key(key) or "<root>", g.name)].add(roles.get((key, dim), "·"))
    return cells


def coupling_dot(analysis: Analysis) -> str:
    """Graphviz source: modules (boxes, clustered by parent) linked to the groups they touch."""
    cells = _cells(analysis)
    modules = _modules(analysis)
    lines = [
        "digraph graphperm {",
        "  rankdir=LR; node [fontname=Helvetica, fontsize=10]; edge [arrowsize=0.5];",
    ]
    clusters: dict[str, list[str]] = defaultdict(list)
    for m in modules:
        clusters[m.rsplit(".", 1)[0] if "." in m else ""].append(m)
    for i, (parent, members) in enumerate(clusters.items()):
        lines.append(
            f'  subgraph cluster_{i} {{ label="{escape(parent or "<root>")}"; '
            "style=rounded; color=gray70;"
        )
        for m in members:
            lines.append(f'    "m:{m}" [shape=box, label="{escape(m.rsplit(".", 1)[-1])}"];')
        lines.append("  }")
    for g in analysis.groups:
        color = KIND_COLORS.get(g.kind, "#bab0ac")
        label = escape(f"{g.name}\\n{g.kind}: {g.structure}")
        lines.append(
            f'  "g:{g.name}" [shape=ellipse, style=filled, fillcolor="{color}", '
            f'fontcolor=white, label="{label}"];'
        )
    for (m, gname), roles in sorted(cells.items()):
        if "o" in roles:
            lines.append(f'  "m:{m}" -> "g:{gname}" [label="out"];')
        if "i" in roles:
            lines.append(f'  "g:{gname}" -> "m:{m}" [label="in"];')
        if roles == {"·"}:
            lines.append(f'  "g:{gname}" -> "m:{m}" [style=dashed, arrowhead=none];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def coupling_svg(analysis: Analysis, *, cell: int = 14) -> str:
    """An SVG matrix of modules (rows) × groups (columns), coloured by group kind."""
    cells = _cells(analysis)
    modules = [m for m in _modules(analysis) if any((m, g.name) in cells for g in analysis.groups)]
    groups = analysis.groups
    left = 8 + 7 * max((len(m) for m in modules), default=10)
    top = 8 + 6 * max((len(g.name) for g in groups), default=10)
    width = left + cell * len(groups) + 160
    height = top + cell * len(modules) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for j, g in enumerate(groups):
        x = left + j * cell + cell // 2 + 4
        out.append(
            f'<text x="{x}" y="{top - 6}" transform="rotate(-60 {x} {top - 6})">'
            f"{escape(g.name)}</text>"
        )
    for i, m in enumerate(modules):
        y = top + i * cell
        if i % 2 == 0:
            out.append(
                f'<rect x="0" y="{y}" width="{left + cell * len(groups)}" '
                f'height="{cell}" fill="#f4f4f4"/>'
            )
        out.append(f'<text x="{left - 6}" y="{y + cell - 3}" text-anchor="end">{escape(m)}</text>')
        for j, g in enumerate(groups):
            roles = cells.get((m, g.name))
            if not roles:
                continue
            x = left + j * cell
            color = KIND_COLORS.get(g.kind, "#bab0ac")
            mark = "".join(r for r in ("o", "i") if r in roles) or "·"
            title = escape(f"{m} × {g.name} ({g.kind} {g.structure}): {mark}")
            out.append(
                f'<g><title>{title}</title><rect x="{x + 1}" y="{y + 1}" '
                f'width="{cell - 2}" height="{cell - 2}" fill="{color}"/>'
                f'<text x="{x + cell // 2}" y="{y + cell - 4}" text-anchor="middle" '
                f'fill="white" font-size="9">{mark}</text></g>'
            )
    lx = left + cell * len(groups) + 16
    for k, (kind, color) in enumerate(KIND_COLORS.items()):
        y = top + k * 18
        out.append(
            f'<rect x="{lx}" y="{y}" width="12" height="12" fill="{color}"/>'
            f'<text x="{lx + 18}" y="{y + 10}">{kind}</text>'
        )
    y = top + len(KIND_COLORS) * 18 + 10
    for k, text in enumerate(("o: output units", "i: input units", "·: per-channel")):
        out.append(f'<text x="{lx}" y="{y + 14 * k}">{text}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
