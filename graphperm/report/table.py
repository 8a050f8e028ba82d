"""Plain-text tables of groups and a summary of what stays fixed and why.

Example:
    >>> print(format_table([["a", "bb"], ["ccc", "d"]], ["x", "y"]))
    x    y
    ---  --
    a    bb
    ccc  d
"""

from __future__ import annotations

from collections import defaultdict

from graphperm.analysis import Analysis, PermutationGroup

__all__ = ["DEFAULT_ROLE", "format_table", "groups_table", "summary_lines"]

#: Where each kind is measured by default (the paper's choice; policies can change it).
DEFAULT_ROLE = {"conv": "pre", "ffn": "post", "attn": "post", "residual": "post", "other": "pre"}


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def measured_at(group: PermutationGroup) -> str:
    """Where the group's activations are measured by default, in words."""
    role = DEFAULT_ROLE.get(group.kind, "pre")
    sites = [s for s in group.sites if s.role == role] or list(group.sites)
    if not sites:
        return "-"
    first = sites[0]
    where = f"{'input of ' if first.role == 'post' else 'output of '}{_consumer(first)}"
    return where + (f" (+{len(sites) - 1})" if len(sites) > 1 else "")


def _consumer(site) -> str:
    return site.module or site.key


def groups_table(analysis: Analysis) -> str:
    rows = []
    for g in analysis.groups:
        rows.append(
            [
                g.name,
                g.kind,
                str(g.size),
                g.structure,
                str(len(g.tensors)),
                measured_at(g),
                rotatable(analysis, g),
            ]
        )
    header = ["group", "kind", "size", "structure", "tensors", "measured at", "rotations"]
    return format_table(rows, header)


def rotatable(analysis: Analysis, group: PermutationGroup) -> str:
    """The parts that also admit any orthogonal transform (``orth``; ``orth·1``: keeping the
    all-ones direction), or ``-`` when every part is permutation-only."""
    out = []
    for p in group.parts:
        s = analysis.symmetry(group.name, p.name)
        if s.family == "orth":
            out.append(f"{p.name} orth" + ("·1" if s.keeps_ones else ""))
    return ", ".join(out) or "-"


def summary_lines(analysis: Analysis) -> list[str]:
    counts = analysis.counts()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    moved = sum(len(g.tensors) for g in analysis.groups)
    out = [f"{len(analysis.groups)} groups ({kinds}); {moved} tensor axes can move"]
    orth = [(g.name, p.name) for g in analysis.groups for p in g.parts]
    orth = [k for k in orth if analysis.symmetry(*k).family == "orth"]
    folds = {f.node for k in orth for f in analysis.symmetry(*k).folds}
    out.append(
        f"{len(orth)} parts also admit rotations (any orthogonal matrix, `transform: orth`)"
        + (f", after folding {len(folds)} norm gains into their readers" if folds else "")
    )
    by_reason: dict[str, list[str]] = defaultdict(list)
    for f in analysis.fixed:
        if f.size > 1:
            by_reason[f.reasons[0]].append(f"{f.key}:{f.dim}")
    if by_reason:
        out.append(f"fixed axes ({sum(len(v) for v in by_reason.values())}):")
        for reason, axes in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            example = ", ".join(axes[:2]) + (", ..." if len(axes) > 2 else "")
            out.append(f"  {len(axes):4d}  {reason}  [{example}]")
    for w in analysis.warnings:
        out.append(f"warning: {w}")
    out.append(f"trace {analysis.traced.seconds:.2f} s, analysis {analysis.seconds:.2f} s")
    return out
