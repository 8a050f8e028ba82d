"""Merging: architecture checks, the alignment pipeline, one interpolation.

Example:
    >>> from graphperm.merge import align, merge_models
"""

from __future__ import annotations

from graphperm.merge.checks import check_same_architecture, model_letter
from graphperm.merge.interpolate import interpolate
from graphperm.merge.pipeline import (
    align,
    align_models,
    enough_data,
    finish_alignment,
    fold_models,
    merge_all,
    merge_models,
    prepare,
)
from graphperm.merge.results import Alignment, MergeResult

__all__ = [
    "Alignment",
    "MergeResult",
    "align",
    "align_models",
    "check_same_architecture",
    "enough_data",
    "finish_alignment",
    "fold_models",
    "interpolate",
    "merge_all",
    "merge_models",
    "model_letter",
    "prepare",
]
