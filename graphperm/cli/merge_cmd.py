"""``graphperm merge`` and ``graphperm align``: calibrate, solve, permute, check, interpolate.

Two models or more: ``graphperm merge A B C --weights 0.5 0.25 0.25`` aligns every model after
A into A's basis from one pass over the calibration data, then interpolates them all.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from graphperm.cli.combine_args import (
    add_combine_args,
    combine_policy,
    sweep_folder,
    sweep_from_args,
    weights_from_args,
)
from graphperm.cli.common import (
    add_dtype_arg,
    add_merge_args,
    choose_policy,
    load_cli_model,
    policy_from_args,
    print_alignment,
    say,
    scoped_policy,
    user_inputs,
)
from graphperm.distributed import finish, is_main
from graphperm.errors import PolicyError, UsageError
from graphperm.merge import Alignment, align_models, merge_all, merge_sweep
from graphperm.output import check_output, output_folder, save_alignment, save_merge
from graphperm.output.config import load_merge_config
from graphperm.trace import LoadedModel

MERGE_HELP = "align models B, C, ... to model A's units on calibration data, then interpolate"
ALIGN_HELP = "find the permutations only (permutations*.safetensors, policy, report)"


def _add_more(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "more_models",
        nargs="*",
        metavar="MODEL_C",
        help="more models (three or more are aligned into A's basis, each against A)",
    )
    p.add_argument(
        "--consensus-rounds",
        type=int,
        metavar="N",
        help="three or more models: N rounds re-aligning each model to the weighted average "
        "of the others after the alignment against A (overrides the policy's "
        "consensus_rounds; needs every pair's statistics)",
    )


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("merge", help=MERGE_HELP, description=MERGE_HELP)
    add_merge_args(p, optional_models=True)
    _add_more(p)
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="re-run a merge from its merge.yaml (models, policy, calibration, weights, seeds, "
        "dtype; given instead of MODEL_A MODEL_B, --policy, --calib and --weights)",
    )
    p.add_argument(
        "--weight-a",
        type=float,
        nargs="+",
        metavar="W",
        help="interpolation weight of model A (overrides the policy's weight_a; the others "
        "share the rest equally); several weights: one merged folder per weight, "
        "OUT/weight-W/, from one calibration and one solve",
    )
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        metavar="W",
        help="interpolation weight of every model, A first, summing to 1 (overrides the "
        "policy's model_weights)",
    )
    add_dtype_arg(p)
    add_combine_args(p)
    p.set_defaults(func=run_merge)
    return p


def add_align_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("align", help=ALIGN_HELP, description=ALIGN_HELP)
    add_merge_args(p)
    _add_more(p)
    p.set_defaults(func=run_align)
    return p


def _specs(args: argparse.Namespace) -> list[str]:
    return [args.model_a, args.model_b, *getattr(args, "more_models", [])]


def _from_config(args: argparse.Namespace) -> None:
    """Fill the merge's arguments from ``--config`` (a merge folder's ``merge.yaml``)."""
    if getattr(args, "config", None) is None:
        if args.model_a is None or args.model_b is None:
            raise UsageError("merge needs MODEL_A and MODEL_B (or --config merge.yaml)")
        return
    given = {
        "MODEL_A": args.model_a,
        "--policy": args.policy,
        "--calib": args.calib,
        "--weights": args.weights,
        "--weight-a": args.weight_a,
    }
    clash = next((name for name, value in given.items() if value not in (None, [])), None)
    if clash is not None:
        raise UsageError(
            f"--config gives the models, policy, calibration and weights; do not pass {clash} too"
        )
    config = load_merge_config(args.config)
    args.model_a, args.model_b, *args.more_models = config.models
    args.policy, args.calib, args.weights = config.policy, list(config.calib), config.weights
    args.random_init = args.random_init or config.random_init
    args.trust_remote_code = args.trust_remote_code or config.trust_remote_code
    args.seed_b = config.seed_b
    if args.dtype == "auto":
        args.dtype = config.dtype


def _where(args: argparse.Namespace) -> str:
    """How errors name the policy."""
    config = getattr(args, "config", None)
    return f"{config}: policy" if isinstance(args.policy, dict) else str(args.policy)


def _setup(args: argparse.Namespace):
    check_output(args.out, args.force, user_inputs(args))  # before any heavy work
    specs = _specs(args)
    weights = weights_from_args(args, len(specs))  # a bad weight fails before any model is loaded
    seeds = [0] + [args.seed_b + k for k in range(len(specs) - 1)]
    models = []
    if args.policy is None:  # the default is chosen from model A
        models = [load_cli_model(args, specs[0], seed=0)]
        choose_policy(args, models[0])
    policy = combine_policy(args, policy_from_args(args))
    args.policy_scope = policy.scope  # the models load in the policy's scope (or --scope)
    rounds = getattr(args, "consensus_rounds", None)
    if rounds is not None:
        if rounds < 0:
            raise PolicyError(f"--consensus-rounds must be 0 or more, not {rounds}")
        policy = policy.model_copy(update={"consensus_rounds": rounds})
    if policy.consensus_rounds > 0 and len(specs) > 2:
        # the consensus averages the others with the merge weights: hand them over
        policy = policy.with_weights(weights) if weights else policy
    try:  # the policy's own model_weights must fit the models too
        (policy.with_weights(weights) if weights else policy).base_weights(len(specs))
    except ValueError as err:
        raise PolicyError(f"{_where(args)}: {err}") from None
    models += [
        load_cli_model(args, spec, seed=seed)
        for spec, seed in list(zip(specs, seeds))[len(models) :]
    ]
    policy = scoped_policy(policy, models[0])
    alignment = align_models(
        models,
        policy,
        args.calib,
        progress=not args.quiet,
        where=_where(args),
        device=args.device,
    )
    return models, alignment, weights


def run_merge(args: argparse.Namespace) -> int:
    try:
        return _merge(args)
    finally:
        finish()


def _merge(args: argparse.Namespace) -> int:
    _from_config(args)
    if args.base:
        from graphperm.cli.task_arithmetic import run_task_arithmetic

        return run_task_arithmetic(args)
    sweep = sweep_from_args(args, len(_specs(args)))  # checked before any model is loaded
    models, alignment, weights = _setup(args)
    if not is_main():
        return 0
    alignment.stats = None  # free the statistics before the merge needs memory
    command = shlex.join(["graphperm", *sys.argv[1:]])
    config = {
        "calib": list(args.calib),
        "random_init": args.random_init,
        "seed_b": args.seed_b,
        "trust_remote_code": args.trust_remote_code,
    }
    if sweep is not None:
        return _sweep(args, models, alignment, sweep, command)
    result = merge_all(alignment, models, weights=weights, inplace=True)
    save_merge(result, args.out, force=args.force, command=command, dtype=args.dtype, config=config)
    print_alignment(alignment)
    if result.check is not None:
        worst = max(c.max_rel for c in result.checks)
        who = "B computes what B computed" if len(models) == 2 else "models compute what they did"
        say(f"check: permuted {who} (max rel err {worst:.2g})")
    names = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    terms = [
        f"{w:g}·{names[k] if k < 26 else k}" + ("'" if k else "")
        for k, w in enumerate(result.weights)
    ]
    say(
        f"merged = {' + '.join(terms)} written to {args.out} (loads with AutoModel.from_pretrained)"
    )
    return 0


def _sweep(
    args: argparse.Namespace,
    models: list[LoadedModel],
    alignment: Alignment,
    sweep: list[list[float]],
    command: str,
) -> int:
    """One merged folder per weight vector, OUT/weight-W/, from the one alignment."""
    with output_folder(args.out, force=args.force) as tmp:
        for result in merge_sweep(alignment, models, sweep, inplace=True):
            save_merge(
                result, tmp / sweep_folder(result.weight_a), command=command, dtype=args.dtype
            )
    print_alignment(alignment)
    names = ", ".join(sweep_folder(w[0]) for w in sweep)
    say(f"{len(sweep)} merges ({names}) written to {args.out}, from one calibration")
    return 0


def run_align(args: argparse.Namespace) -> int:
    try:
        _, alignment, _ = _setup(args)
        if not is_main():
            return 0
        with output_folder(args.out, force=args.force, inputs=user_inputs(args)) as tmp:
            save_alignment(alignment, tmp)
        print_alignment(alignment)
        say(f"permutations written to {args.out / 'permutations.safetensors'}")
        return 0
    finally:
        finish()
