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
    aligned_states,
    check_scope,
    enough_data,
    finish_alignment,
    fold_models,
    merge_all,
    merge_models,
    prepare,
)
from graphperm.merge.results import Alignment, MergeResult
from graphperm.merge.sweep import merge_sweep, sweep_weights
from graphperm.merge.task import (
    TaskArithmeticResult,
    TaskDistance,
    task_arithmetic,
    task_arithmetic_sweep,
)

__all__ = [
    "Alignment",
    "MergeResult",
    "TaskArithmeticResult",
    "TaskDistance",
    "align",
    "align_models",
    "aligned_states",
    "check_same_architecture",
    "check_scope",
    "enough_data",
    "finish_alignment",
    "fold_models",
    "interpolate",
    "merge_all",
    "merge_models",
    "merge_sweep",
    "model_letter",
    "prepare",
    "sweep_weights",
    "task_arithmetic",
    "task_arithmetic_sweep",
]
