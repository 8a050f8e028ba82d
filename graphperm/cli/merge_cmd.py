"""``graphperm merge`` and ``graphperm align``: calibrate, solve, permute, check, interpolate."""

from __future__ import annotations

import argparse

from graphperm.cli.common import (
    add_merge_args,
    load_cli_model,
    policy_from_args,
    print_alignment,
    say,
)
from graphperm.distributed import is_main
from graphperm.merge import align, merge_models
from graphperm.output import check_output, output_folder, save_alignment, save_merge

MERGE_HELP = "align model B's units to model A's on calibration audio, then interpolate"
ALIGN_HELP = "find the permutations only (permutations.safetensors, policy, report)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("merge", help=MERGE_HELP, description=MERGE_HELP)
    add_merge_args(p)
    p.add_argument(
        "--weight-a",
        type=float,
        metavar="W",
        help="interpolation weight of model A (overrides the policy's weight_a)",
    )
    p.set_defaults(func=run_merge)
    return p


def add_align_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("align", help=ALIGN_HELP, description=ALIGN_HELP)
    add_merge_args(p)
    p.set_defaults(func=run_align)
    return p


def _setup(args: argparse.Namespace):
    check_output(args.out, args.force)  # before any heavy work
    policy = policy_from_args(args)
    a = load_cli_model(args, args.model_a, seed=0)
    b = load_cli_model(args, args.model_b, seed=args.seed_b)
    alignment = align(
        a, b, policy, args.calib, progress=not args.quiet, where=args.policy, device=args.device
    )
    return a, b, alignment


def run_merge(args: argparse.Namespace) -> int:
    a, b, alignment = _setup(args)
    if not is_main():
        return 0
    alignment.stats = None  # free the statistics before the merge needs memory
    result = merge_models(alignment, a, b, weight_a=args.weight_a, inplace=True)
    save_merge(result, args.out, force=args.force)
    print_alignment(alignment)
    if result.check is not None:
        say(f"check: permuted B computes what B computed (max rel err {result.check.max_rel:.2g})")
    w = result.weight_a
    say(
        f"merged = {w:g}·A + {1 - w:g}·B' written to {args.out} "
        "(loads with AutoModel.from_pretrained)"
    )
    return 0


def run_align(args: argparse.Namespace) -> int:
    _, _, alignment = _setup(args)
    if not is_main():
        return 0
    with output_folder(args.out, force=args.force) as tmp:
        save_alignment(alignment, tmp)
    print_alignment(alignment)
    say(f"permutations written to {args.out / 'permutations.safetensors'}")
    return 0
