"""``graphperm merge A B --base BASE``: task arithmetic, no alignment, no calibration."""

from __future__ import annotations

import argparse
import shlex
import sys

from graphperm.cli.combine_args import (
    combine_policy,
    sweep_folder,
    sweep_from_args,
    weights_from_args,
)
from graphperm.cli.common import load_cli_model, policy_from_args, say, user_inputs
from graphperm.errors import PolicyError
from graphperm.merge import task_arithmetic_sweep
from graphperm.output import check_output, output_folder
from graphperm.output.task import write_task_arithmetic
from graphperm.policy import Policy

__all__ = ["run_task_arithmetic"]


def _weights(args: argparse.Namespace, models: int, policy: Policy) -> list[list[float]]:
    sweep = sweep_from_args(args, models)
    if sweep is not None:
        return sweep
    weights = weights_from_args(args, models)
    if weights is not None:
        return [weights]
    try:
        return [policy.base_weights(models)]
    except ValueError as err:
        raise PolicyError(f"{args.policy}: {err}") from None


def run_task_arithmetic(args: argparse.Namespace) -> int:
    """Check everything, load the base and the models, combine, write (all or nothing)."""
    check_output(args.out, args.force, user_inputs(args))
    specs = [args.model_a, args.model_b, *args.more_models]
    if args.policy is None:  # no alignment: the policy only carries weights and combination
        args.policy = "average"
    policy = combine_policy(args, policy_from_args(args))
    weights = _weights(args, len(specs), policy)
    base = load_cli_model(args, args.base, seed=0)
    seeds = [0] + [args.seed_b + k for k in range(len(specs) - 1)]
    models = [load_cli_model(args, spec, seed=seed) for spec, seed in zip(specs, seeds)]
    command = shlex.join(["graphperm", *sys.argv[1:]])
    sweep = len(weights) > 1
    results = task_arithmetic_sweep(base, models, weights, policy=policy, inplace=True)
    with output_folder(args.out, force=args.force, inputs=user_inputs(args)) as tmp:
        for k, result in enumerate(results):
            if k == 0:
                for d in result.distances:
                    say(
                        f"{d.source}: {100 * d.changed_tensors:.0f}% of tensors differ from the "
                        f"base, relative distance {d.relative_distance:.4f}, median cosine "
                        f"{d.median_cosine:.3f}"
                    )
                for w in result.warnings:
                    say(f"warning: {w}")
            folder = tmp / sweep_folder(result.weight_a) if sweep else tmp / "merged"
            write_task_arithmetic(result, folder, command)
            if not sweep:
                for p in folder.iterdir():
                    p.rename(tmp / p.name)
                folder.rmdir()
    c = policy.combine
    how = "" if c.method == "interpolate" else f" ({c.method})"
    if sweep:
        terms = " + ".join(f"w_{chr(65 + i)}·τ_{chr(65 + i)}" for i in range(len(specs)))
        each = ", ".join(sweep_folder(w[0]) for w in weights)
        say(f"merged = BASE + {c.scale:g}·({terms}){how} written to {args.out}: {each}")
    else:
        terms = " + ".join(f"{w:g}·τ_{chr(65 + i)}" for i, w in enumerate(weights[0]))
        say(f"merged = BASE + {c.scale:g}·({terms}){how} written to {args.out}")
    return 0
