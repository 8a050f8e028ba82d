"""Policies: pydantic models, loading with one-line errors, and resolution against a model."""

from __future__ import annotations

from graphperm.policy.load import SPECS, load_policy, policy_names
from graphperm.policy.model import (
    AlignRule,
    Calibration,
    Learn,
    Policy,
    Repair,
    WeightOverride,
)
from graphperm.policy.resolve import Plan, Target, resolve

__all__ = [
    "SPECS",
    "AlignRule",
    "Calibration",
    "Learn",
    "Plan",
    "Policy",
    "Repair",
    "Target",
    "WeightOverride",
    "load_policy",
    "policy_names",
    "resolve",
]
