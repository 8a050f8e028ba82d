"""``graphperm merge`` and ``graphperm align``: calibrate, solve, permute, check, interpolate."""

from __future__ import annotations

import argparse
from pathlib import Path

from graphperm.cli.common import add_model_args, load_cli_model, say
from graphperm.distributed import is_main
from graphperm.merge import align, check_output, merge_models, output_folder, save_alignment
from graphperm.merge.pipeline import save_merge
from graphperm.policy import load_policy
from graphperm.report import format_table

MERGE_HELP = "align model B's units to model A's on calibration audio, then interpolate"
ALIGN_HELP = "find the permutations only (permutations.safetensors, policy, report)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("merge", help=MERGE_HELP, description=MERGE_HELP)
    _common(p)
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
    _common(p)
    p.set_defaults(func=run_align)
    return p


def _common(p: argparse.ArgumentParser, out_help: str = "output folder") -> None:
    add_model_args(p, names=("model_a", "model_b"))
    p.add_argument(
        "--policy",
        default="paper",
        help="a policy file (YAML/JSON) or a built-in name (default: paper)",
    )
    p.add_argument(
        "--calib",
        action="append",
        default=[],
        metavar="PATH",
        help="calibration audio: a file or folder; repeat to mix sources",
    )
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help=out_help)
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the forwards and statistics run (auto: a GPU if there is one)",
    )
    p.add_argument("--num-clips", type=int, metavar="N", help="override calibration.num_clips")
    p.add_argument(
        "--seed-b",
        type=int,
        default=1,
        help="with --random-init: seed of model B's weights (A uses 0)",
    )


def _setup_policy(args: argparse.Namespace):
    policy = load_policy(args.policy)
    if args.num_clips is not None:
        cal = policy.calibration.model_copy(update={"num_clips": args.num_clips})
        policy = policy.model_copy(update={"calibration": cal})
    return policy


def _setup(args: argparse.Namespace):
    check_output(args.out, args.force)  # before any heavy work
    policy = _setup_policy(args)
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
    _print_report(alignment)
    if result.check is not None:
        say(f"check: permuted B computes what B computed (max rel err {result.check.max_rel:.2g})")
    say(
        f"merged = {alignment.policy.weight_a:g}·A + {1 - alignment.policy.weight_a:g}·B' "
        f"written to {args.out} (loads with AutoModel.from_pretrained)"
    )
    return 0


def run_align(args: argparse.Namespace) -> int:
    _, _, alignment = _setup(args)
    if not is_main():
        return 0
    with output_folder(args.out, force=args.force) as tmp:
        save_alignment(alignment, tmp)
    _print_report(alignment)
    say(f"permutations written to {args.out / 'permutations.safetensors'}")
    return 0


def _print_report(alignment) -> None:
    cal = alignment.calibration
    if cal:
        say(f"calibration: {cal['description']}", "")
    if not alignment.reports:
        say("no group aligned (plain interpolation)")
        return
    rows = [
        [
            r.name,
            r.kind,
            ",".join(r.parts),
            f"{100 * r.moved_fraction:.1f}%",
            f"{r.corr_before:.3f}" if r.corr_before is not None else "-",
            f"{r.corr_after:.3f}" if r.corr_after is not None else "-",
        ]
        for r in alignment.reports
    ]
    say(format_table(rows, ["group", "kind", "parts", "moved", "corr before", "corr after"]), "")
    for missing in alignment.plan.unmeasured:
        say(f"warning: {missing} has no activation site; left in place")
