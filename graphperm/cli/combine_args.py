"""Command-line options of the combine seam (``graphperm merge``): the combination and its
settings, a sweep of A's weight, and a base model for task arithmetic."""

from __future__ import annotations

import argparse

from graphperm.errors import PolicyError
from graphperm.merge import sweep_weights
from graphperm.merge.combine import COMBINATIONS, get_combination
from graphperm.policy import Policy, load_policy

__all__ = [
    "add_combine_args",
    "combine_policy",
    "sweep_folder",
    "sweep_from_args",
    "weights_from_args",
]


def add_combine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        metavar="BASE",
        help="task arithmetic: the model A, B, ... were fine-tuned or distilled from; merged = "
        "BASE + scale·Σ w·(model − BASE), no alignment (needs neither --policy nor --calib; "
        "only the policy's weights and combine are used)",
    )
    p.add_argument(
        "--combine",
        metavar="NAME",
        help="how the aligned models are combined (overrides the policy's combine.method): "
        + ", ".join(sorted(COMBINATIONS)),
    )
    p.add_argument(
        "--quantile",
        type=float,
        metavar="Q",
        help="ties: trim differences below this quantile of their tensor's magnitudes (0.8)",
    )
    p.add_argument(
        "--drop", type=float, metavar="P", help="dare: probability of dropping an entry (0.5)"
    )
    p.add_argument(
        "--scale",
        type=float,
        metavar="S",
        help="task arithmetic (--base): factor of the combined task vectors (1)",
    )


def combine_policy(args: argparse.Namespace, policy: Policy) -> Policy:
    """``policy`` with the ``--combine``, ``--quantile``, ``--drop`` and ``--scale`` overrides,
    validated again (one-line errors naming the field); the combination must exist, and a
    scale needs a base."""
    settings = {
        name: getattr(args, name, None)
        for name in ("quantile", "drop", "scale")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "combine", None):
        settings["method"] = args.combine
    if settings:
        data = policy.model_dump()
        data["combine"] = {**data["combine"], **settings}
        policy = load_policy(data)
    where = getattr(args, "policy", "policy")
    get_combination(policy.combine.method, where=where)
    if policy.combine.scale != 1.0 and not getattr(args, "base", None):
        raise PolicyError(
            "combine.scale (--scale) is a factor of task vectors; give --base BASE or leave it at 1"
        )
    return policy


def weights_from_args(args: argparse.Namespace, models: int) -> list[float] | None:
    """The ``--weights`` / ``--weight-a W`` override (None: the policy's, or a sweep of several
    ``--weight-a``), checked before any model is loaded."""
    weights = getattr(args, "weights", None)
    weight_a = getattr(args, "weight_a", None)
    if weight_a is not None and len(weight_a) > 1:
        return None  # a sweep (sweep_from_args)
    weight_a = weight_a[0] if weight_a else None
    if weights is not None and weight_a is not None:
        raise PolicyError("give --weights or --weight-a, not both")
    if weights is not None:
        if len(weights) != models:
            raise PolicyError(f"--weights has {len(weights)} weights for {models} models")
        if any(not 0.0 <= w <= 1.0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise PolicyError(
                f"--weights must be in [0, 1] and sum to 1 (they sum to {sum(weights):g})"
            )
        return list(weights)
    if weight_a is not None:
        if not 0.0 <= weight_a <= 1.0:
            raise PolicyError(f"--weight-a must be in [0, 1], not {weight_a:g}")
        return [weight_a] + [(1.0 - weight_a) / (models - 1)] * (models - 1)
    return None


def sweep_from_args(args: argparse.Namespace, models: int) -> list[list[float]] | None:
    """The weight vectors of a ``--weight-a W1 W2 ...`` sweep (None for one weight or none),
    checked before any model is loaded."""
    weights_a = getattr(args, "weight_a", None)
    if not weights_a or len(weights_a) < 2:
        return None
    if getattr(args, "weights", None) is not None:
        raise PolicyError("give --weights or --weight-a, not both")
    bad = [w for w in weights_a if not 0.0 <= w <= 1.0]
    if bad:
        raise PolicyError(f"every --weight-a must be in [0, 1], not {bad[0]:g}")
    names = [sweep_folder(w) for w in weights_a]
    if len(set(names)) != len(names):
        raise PolicyError("--weight-a repeats a weight; give each weight once")
    return sweep_weights(weights_a, models)


def sweep_folder(weight_a: float) -> str:
    """The sweep's sub-folder for A's weight ``weight_a``.

    Example:
        >>> sweep_folder(0.9), sweep_folder(0.25)
        ('weight-0.9', 'weight-0.25')
    """
    return f"weight-{weight_a:g}"
