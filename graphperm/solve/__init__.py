"""Solving: alignment methods (a registry), linear assignment per part, hierarchical blocks.

Example:
    >>> from graphperm.solve import get_method
    >>> get_method("activations").name
    'activations'
"""

from __future__ import annotations

from graphperm.solve.agreement import agreement
from graphperm.solve.assignment import block_scores, match
from graphperm.solve.consensus import ConsensusRound, correlation_with_a, refine
from graphperm.solve.methods import (
    METHODS,
    AlignmentMethod,
    Problem,
    RunContext,
    Solution,
    get_method,
    register_method,
    split_half_agreement,
)
from graphperm.solve.sinkhorn import sinkhorn_match  # registers method sinkhorn
from graphperm.solve.solver import GroupReport, solve
from graphperm.solve.symmetric import symmetric_match  # registers method symmetric
from graphperm.solve.weights import weight_matching  # registers methods weights, hybrid

__all__ = [
    "METHODS",
    "AlignmentMethod",
    "ConsensusRound",
    "GroupReport",
    "Problem",
    "RunContext",
    "Solution",
    "agreement",
    "block_scores",
    "correlation_with_a",
    "get_method",
    "match",
    "refine",
    "register_method",
    "sinkhorn_match",
    "solve",
    "split_half_agreement",
    "symmetric_match",
    "weight_matching",
]
