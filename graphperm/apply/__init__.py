"""Applying permutations to weights, and checking that the result computes the same function."""

from __future__ import annotations

from graphperm.apply.apply import permute_state
from graphperm.apply.indexer import Indexer
from graphperm.apply.permutation import Permutation, identity, random_permutation
from graphperm.apply.verify import OutputCheck, VerifyReport, compare_outputs, verify

__all__ = [
    "Indexer",
    "OutputCheck",
    "Permutation",
    "VerifyReport",
    "compare_outputs",
    "identity",
    "permute_state",
    "random_permutation",
    "verify",
]
