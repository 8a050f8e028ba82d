"""Human-readable renderings: tables for the terminal, Graphviz and SVG pictures."""

from __future__ import annotations

from graphperm.report.picture import coupling_dot, coupling_svg
from graphperm.report.table import format_table, groups_table, summary_lines

__all__ = ["coupling_dot", "coupling_svg", "format_table", "groups_table", "summary_lines"]
