"""The one error hierarchy of graphperm.

Every error that a user can cause (a bad path, a policy typo, an empty calibration set, models that
do not match) is a :class:`GraphpermError`. Its message is one line that says what went wrong,
where, and how to fix it; the command-line interface prints it and exits with code 2. Anything else
that escapes is a bug in graphperm.

Example:
    >>> from graphperm.errors import PolicyError
    >>> try:
    ...     raise PolicyError("p.yaml: align[0].kind: 'atn' is not a kind (did you mean 'attn'?)")
    ... except GraphpermError as err:
    ...     print(err)
    p.yaml: align[0].kind: 'atn' is not a kind (did you mean 'attn'?)
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "GraphpermError",
    "MismatchError",
    "ModelLoadError",
    "OutputExistsError",
    "PolicyError",
    "TraceError",
    "UsageError",
    "VerificationError",
]


class GraphpermError(Exception):
    """Root of every error a user can cause; the message is one actionable line."""


class ModelLoadError(GraphpermError):
    """A model path or hub id could not be loaded, or has no example-input recipe."""


class TraceError(GraphpermError):
    """torch.export could not capture the model."""


class PolicyError(GraphpermError):
    """A policy file is malformed, names unknown fields or groups, or selects nothing."""


class CalibrationError(GraphpermError):
    """The calibration data is empty, unreadable, or produced NaN activations."""


class MismatchError(GraphpermError):
    """Models (or a model and a permutation file) do not have the same architecture."""


class UsageError(GraphpermError):
    """A command-line argument or a file named on it is wrong (missing, malformed)."""


class OutputExistsError(GraphpermError):
    """The output folder exists and is not empty (pass --force to overwrite it)."""


class VerificationError(GraphpermError):
    """A permuted model no longer computes what the original computed."""
