"""``graphperm eval A B MERGED [MERGED ...]``: how close each merged model's outputs are to its
parents' on held-out data (linear CKA), and the model's own masked-LM loss where its head has
one; to compare merges without writing code."""

from __future__ import annotations

import argparse
import json

from graphperm.cli.common import load_cli_model, say
from graphperm.errors import UsageError
from graphperm.merge import check_same_architecture
from graphperm.merge.evaluate import evaluate
from graphperm.policy import Calibration
from graphperm.report import format_table

HELP = "score merged models against their parents on held-out data (CKA of outputs, MLM loss)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help=HELP,
        description=HELP + ". CKA (linear centred kernel alignment) of the main outputs at "
        "every valid position: 1.0 when one is a rotation of the other up to scale, 0 when "
        "unrelated; it does not depend on the basis, so any merge can be scored.",
    )
    p.add_argument("model_a", metavar="MODEL_A", help="the first parent (a folder, hub id, ...)")
    p.add_argument("model_b", metavar="MODEL_B", help="the second parent")
    p.add_argument("merged", nargs="+", metavar="MERGED", help="merged models to score")
    p.add_argument(
        "--calib",
        action="append",
        default=[],
        required=True,
        metavar="PATH",
        help="held-out data the merges were not calibrated on (what the model reads, as for "
        "merge --calib); repeat to mix sources",
    )
    p.add_argument("--num-items", type=int, default=64, metavar="N", help="items to use (64)")
    p.add_argument("--batch-size", type=int, default=2, metavar="N", help="items per batch (2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the data order and MLM masks")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where models run"
    )
    p.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's code")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.num_items < 1 or args.batch_size < 1:
        raise UsageError("--num-items and --batch-size must be 1 or more")
    specs = [args.model_a, args.model_b, *args.merged]
    models = [load_cli_model(args, spec, seed=k) for k, spec in enumerate(specs)]
    check_same_architecture(*models)
    settings = Calibration(num_clips=args.num_items, batch_size=args.batch_size, seed=args.seed)
    scores = evaluate(models, args.calib, settings=settings, device=args.device)
    if args.json:
        say(json.dumps({"models": specs, **scores}, indent=2))
        return 0
    cka, loss = scores["cka"], scores.get("mlm_loss")
    rows = [[specs[0], "1.000", f"{cka['0-1']:.3f}"], [specs[1], f"{cka['0-1']:.3f}", "1.000"]]
    rows += [
        [spec, f"{cka[f'0-{k}']:.3f}", f"{cka[f'1-{k}']:.3f}"]
        for k, spec in enumerate(specs[2:], start=2)
    ]
    header = ["model", "CKA with A", "CKA with B"]
    if loss is not None:
        header.append("masked-LM loss")
        for row, value in zip(rows, loss):
            row.append("-" if value is None else f"{value:.3f}")
    say(
        f"{scores['items']} held-out items, {scores['positions']} output positions",
        "",
        format_table(rows, header),
        "",
        "CKA: 1 = the same representation up to a rotation and scale, 0 = unrelated.",
    )
    return 0
