"""Axis-coupling analysis: from an exported graph to permutation groups.

Example:
    >>> from graphperm.trace import load_model, trace
    >>> from graphperm.analysis import analyse
    >>> analysis = analyse(trace(load_model("builtin:hubert-tiny")))
    >>> sorted({g.kind for g in analysis.groups})
    ['attn', 'conv', 'ffn', 'residual']
"""

from __future__ import annotations

from graphperm.analysis.analysis import Analysis, analyse
from graphperm.analysis.groups import KINDS, PART_NAMES, FixedAxis, Part, PermutationGroup, Site

__all__ = [
    "KINDS",
    "PART_NAMES",
    "Analysis",
    "FixedAxis",
    "Part",
    "PermutationGroup",
    "Site",
    "analyse",
]
