"""Combinations after alignment (a registry, like alignment methods): ``interpolate`` (the
default), ``ties`` and ``dare``, each with or without a base model (task arithmetic).

Example:
    >>> from graphperm.merge.combine import COMBINATIONS
    >>> sorted(COMBINATIONS)
    ['dare', 'interpolate', 'ties']
"""

from __future__ import annotations

from graphperm.merge.combine.dare import Dare, drop_and_rescale  # registers
from graphperm.merge.combine.interpolation import Interpolation, weighted_sum  # registers
from graphperm.merge.combine.registry import (
    COMBINATIONS,
    Combination,
    combine,
    get_combination,
    register_combination,
    tensor_generator,
)
from graphperm.merge.combine.ties import Ties, magnitude_threshold, trim_mask  # registers

__all__ = [
    "COMBINATIONS",
    "Combination",
    "Dare",
    "Interpolation",
    "Ties",
    "combine",
    "drop_and_rescale",
    "get_combination",
    "magnitude_threshold",
    "register_combination",
    "tensor_generator",
    "trim_mask",
    "weighted_sum",
]
