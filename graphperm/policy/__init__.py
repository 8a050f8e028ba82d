"""Policies: pydantic models, loading with one-line errors, and resolution against a model."""

from __future__ import annotations

from graphperm.policy.choose import default_policy
from graphperm.policy.load import SPECS, load_policy, policy_names
from graphperm.policy.model import (
    AlignRule,
    Calibration,
    Combine,
    Learn,
    Policy,
    Repair,
    WeightOverride,
    ZipIt,
)
from graphperm.policy.resolve import Plan, Target, resolve

__all__ = [
    "SPECS",
    "AlignRule",
    "Calibration",
    "Combine",
    "Learn",
    "Plan",
    "Policy",
    "Repair",
    "Target",
    "WeightOverride",
    "ZipIt",
    "default_policy",
    "load_policy",
    "policy_names",
    "resolve",
]
