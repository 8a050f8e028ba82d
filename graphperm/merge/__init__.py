"""Merging: architecture checks, alignment pipeline, interpolation, all-or-nothing output."""

from __future__ import annotations

from graphperm.merge.checks import check_same_architecture
from graphperm.merge.interpolate import interpolate
from graphperm.merge.output import check_output, output_folder
from graphperm.merge.pipeline import (
    Alignment,
    MergeResult,
    align,
    merge_models,
    save_alignment,
    save_merge,
)

__all__ = [
    "Alignment",
    "MergeResult",
    "align",
    "check_output",
    "check_same_architecture",
    "interpolate",
    "merge_models",
    "output_folder",
    "save_alignment",
    "save_merge",
]
