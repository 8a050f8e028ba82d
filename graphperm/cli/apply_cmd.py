"""``graphperm apply``: permute a model with a saved permutations file (and optionally merge)."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from graphperm.apply import (
    Indexer,
    Permutation,
    check_inputs,
    check_permuted,
    outputs,
    permute_state,
)
from graphperm.cli.common import (
    add_dtype_arg,
    add_model_args,
    analyse_model,
    load_cli_model,
    say,
    say_unused,
    user_inputs,
)
from graphperm.errors import UsageError
from graphperm.merge import Alignment, check_same_architecture, merge_models
from graphperm.output import check_output, output_folder, report_dict, write_model
from graphperm.output.card import model_card, permuted_card, permuted_report
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
    p.add_argument(
        "--policy",
        help="policy with the weights (--merge-into; default: the policy.yaml next to --perms, "
        "else paper)",
    )
    p.add_argument(
        "--weight-a",
        type=float,
        metavar="W",
        help="override the policy's weight_a (with --merge-into)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    add_dtype_arg(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.merge_into is None and (args.weight_a is not None or args.policy is not None):
        given = "--weight-a" if args.weight_a is not None else "--policy"
        raise UsageError(f"{given} sets the weights of a merge: pass --merge-into MODEL_A too")
    if args.weight_a is not None and not 0.0 <= args.weight_a <= 1.0:
        raise UsageError(f"--weight-a must be in [0, 1], not {args.weight_a:g}")
    check_output(args.out, args.force, user_inputs(args))
    if not args.perms.is_file():
        raise UsageError(f"--perms '{args.perms}' does not exist; check the path")
    policy_source = args.policy
    if policy_source is None:
        beside = args.perms.parent / "policy.yaml"
        policy_source = beside if beside.is_file() else "paper"
    policy = load_policy(policy_source)
    args.policy_scope = policy.scope  # the scope the permutations were found in
    b = load_cli_model(args, args.model_b, seed=1)
    analysis = analyse_model(args, b)
    indexer = Indexer(analysis)
    try:
        perm = Permutation.load(args.perms)
    except Exception as err:  # safetensors raises several kinds for a bad file
        raise UsageError(f"'{args.perms}' is not a permutations file: {err}") from err
    perm.check(indexer.shapes())
    command = shlex.join(["graphperm", *sys.argv[1:]])
    if args.merge_into:
        a = load_cli_model(args, args.merge_into, seed=0)
        check_same_architecture(a, b)
        alignment = Alignment.from_permutations(
            analysis, Plan(policy), [perm], (a.source, b.source)
        )
        result = merge_models(alignment, a, b, weight_a=args.weight_a)
        target, state, report, w = a, result.state, result.check, result.weight_a
        rest = result.rest
        written = report_dict(alignment, result)
        written["method"] = f"permutations read from {args.perms}"
        card = model_card(written, command, config=False)
    else:
        inputs = check_inputs(analysis)
        reference = outputs(b.module, inputs)
        state = permute_state(indexer, b.state_dict(), perm, inplace=True)
        report = check_permuted(analysis, perm, reference, b.module, inputs)
        target, w, rest = b, None, None
        written = permuted_report(b.source, str(args.perms), report)
        card = permuted_card(written, command)
    with output_folder(args.out, force=args.force, inputs=user_inputs(args)) as tmp:
        write_model(tmp, target, state, rest, dtype=args.dtype)
        shutil.copy(args.perms, tmp / "permutations.safetensors")
        name = "merge_report.json" if w is not None else "apply_report.json"
        (tmp / name).write_text(json.dumps(written, indent=2))
        (tmp / "README.md").write_text(card)
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
