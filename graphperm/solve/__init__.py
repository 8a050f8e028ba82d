"""Solving: linear assignment per part, hierarchical for blocks (heads × channels)."""

from __future__ import annotations

from graphperm.solve.agreement import agreement
from graphperm.solve.assignment import block_scores, match, match_score
from graphperm.solve.solver import GroupReport, solve

__all__ = ["GroupReport", "agreement", "block_scores", "match", "match_score", "solve"]
