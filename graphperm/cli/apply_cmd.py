"""``graphperm apply``: permute a model with a saved permutations file (and optionally merge)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from graphperm.apply import (
    Indexer,
    Permutation,
    check_inputs,
    check_permuted,
    outputs,
    permute_state,
)
from graphperm.cli.common import add_model_args, analyse_model, load_cli_model, say, say_unused
from graphperm.errors import UsageError
from graphperm.merge import Alignment, check_same_architecture, merge_models
from graphperm.output import check_output, output_folder, write_model
from graphperm.policy import Plan, load_policy

HELP = "apply a permutations.safetensors file to model B (and optionally merge it into A)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("apply", help=HELP, description=HELP)
    add_model_args(p, names=("model_b",))
    p.add_argument(
        "--perms",
        type=Path,
        required=True,
        metavar="FILE",
        help="permutations.safetensors written by `graphperm merge` or `align`",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--merge-into", metavar="MODEL_A", help="interpolate the permuted B with this model A"
    )
    p.add_argument("--policy", default="paper", help="policy with the weights (--merge-into)")
    p.add_argument("--weight-a", type=float, metavar="W", help="override the policy's weight_a")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.force)
    if not args.perms.is_file():
        raise UsageError(f"--perms '{args.perms}' does not exist; check the path")
    b = load_cli_model(args, args.model_b, seed=1)
    analysis = analyse_model(args, b)
    indexer = Indexer(analysis)
    try:
        perm = Permutation.load(args.perms)
    except Exception as err:  # safetensors raises several kinds for a bad file
        raise UsageError(f"'{args.perms}' is not a permutations file: {err}") from err
    perm.check(indexer.shapes())
    policy = load_policy(args.policy)
    if args.merge_into:
        a = load_cli_model(args, args.merge_into, seed=0)
        check_same_architecture(a, b)
        alignment = Alignment.from_permutations(
            analysis, Plan(policy), [perm], (a.source, b.source)
        )
        result = merge_models(alignment, a, b, weight_a=args.weight_a)
        target, state, report, w = a, result.state, result.check, result.weight_a
    else:
        inputs = check_inputs(analysis)
        reference = outputs(b.module, inputs)
        state = permute_state(indexer, b.state_dict(), perm, inplace=True)
        report = check_permuted(analysis, perm, reference, b.module, inputs)
        target, w = b, None
    with output_folder(args.out, force=args.force) as tmp:
        write_model(tmp, target, state)
        shutil.copy(args.perms, tmp / "permutations.safetensors")
    checked = (
        f"; permuted B computes what B computed (max rel error {report.max_rel:.2g})"
        if report is not None
        else ""
    )
    say_unused(analysis)
    say(f"applied {sum(1 for _ in perm)} part permutations of {len(perm.perms)} groups{checked}")
    what = f"{w:g}·A + {1 - w:g}·B'" if w is not None else "B'"
    say(f"{what} written to {args.out}")
    return 0
