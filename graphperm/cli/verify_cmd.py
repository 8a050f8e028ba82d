"""``graphperm verify MODEL``: permute every group at random and check nothing changed."""

from __future__ import annotations

import argparse

from graphperm.analysis import Analysis
from graphperm.apply import check_inputs, verify
from graphperm.apply.verify import ATOL, RTOL
from graphperm.cli.common import add_model_args, analyse_model, load_cli_model, say
from graphperm.report import format_table

HELP = (
    "check that random permutations of every group (and random rotations of every part that "
    "admits them) leave the model's outputs unchanged"
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help=HELP, description=HELP + " (exit 0: they agree, 1: not)")
    add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random permutations")
    p.add_argument(
        "--no-rotations",
        action="store_true",
        help="permute every part, never rotate (what `transform: perm` policies do)",
    )
    p.set_defaults(func=run)
    return p


def output_labels(analysis: Analysis) -> list[str]:
    """The model's names for its output tensors (``last_hidden_state``, ``pooler_output``;
    ``0``, ``1`` for a tuple), in the order the graph returns them."""
    import torch
    from torch.utils import _pytree as pytree

    module, inputs = analysis.traced.loaded.module, check_inputs(analysis)
    with torch.no_grad():
        leaves, _ = pytree.tree_flatten_with_path(module(**inputs))
    return [
        pytree.keystr(path).replace("']['", ".").strip("[]'\".") or "output"
        for path, leaf in leaves
        if isinstance(leaf, torch.Tensor)
    ]


def run(args: argparse.Namespace) -> int:
    analysis = analyse_model(args, load_cli_model(args, args.model))
    report = verify(analysis, seed=args.seed, rotations=not args.no_rotations)
    parts = sum(len(g.parts) for g in analysis.groups)
    turned = f", {report.rotated_parts} of them rotated" if report.rotated_parts else ""
    say(
        f"transformed {len(analysis.groups)} groups ({parts} parts{turned}) at random "
        f"(seed {args.seed})",
        "",
    )
    labels = output_labels(analysis)
    if len(labels) != len(report.outputs):
        labels = [o.name for o in report.outputs]
    rows = [
        [
            label,
            "x".join(map(str, o.shape)),
            "yes" if o.moved else "no",
            f"{o.max_abs:.3g}",
            f"{o.max_rel:.3g}",
            "ok" if o.ok else "MISMATCH",
        ]
        for label, o in zip(labels, report.outputs)
    ]
    say(format_table(rows, ["output", "shape", "permuted", "max abs err", "max rel err", ""]), "")
    if report.ok:
        say(f"OK: outputs agree within float32 tolerance (atol {ATOL:g} + rtol {RTOL:g} × max|y|)")
        return 0
    say(
        "FAILED: the permuted model computes something else; a rule is wrong. Please report it "
        "with `graphperm trace --json` output."
    )
    return 1
