"""Applying permutations (and rotations) to weights, and checking that the result computes the
same function."""

from __future__ import annotations

from graphperm.apply.apply import permute_state
from graphperm.apply.fold import fold_state, folds_for
from graphperm.apply.indexer import Indexer
from graphperm.apply.permutation import (
    Permutation,
    ones_basis,
    random_orthogonal,
    random_permutation,
)
from graphperm.apply.verify import (
    OutputCheck,
    VerifyReport,
    check_inputs,
    check_permuted,
    compare_outputs,
    flat_outputs,
    outputs,
    verify,
)

__all__ = [
    "Indexer",
    "OutputCheck",
    "Permutation",
    "VerifyReport",
    "check_inputs",
    "check_permuted",
    "compare_outputs",
    "flat_outputs",
    "fold_state",
    "folds_for",
    "ones_basis",
    "outputs",
    "permute_state",
    "random_orthogonal",
    "random_permutation",
    "verify",
]
