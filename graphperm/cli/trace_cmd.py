"""``graphperm trace MODEL``: the permutation groups of a model, as a table, JSON or a picture."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from graphperm.cli.common import add_model_args, analyse_model, load_cli_model, say
from graphperm.report import coupling_dot, coupling_svg, groups_table, summary_lines

HELP = "list a model's permutation groups (table, --json, --dot picture)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("trace", help=HELP, description=HELP)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--dot",
        type=Path,
        metavar="FILE",
        help="write Graphviz source to FILE and an SVG coupling picture next to it",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    analysis = analyse_model(args, load_cli_model(args, args.model))
    if args.dot is not None:
        args.dot.parent.mkdir(parents=True, exist_ok=True)
        args.dot.write_text(coupling_dot(analysis))
        svg = args.dot.with_suffix(".svg")
        svg.write_text(coupling_svg(analysis))
    if args.json:
        say(json.dumps(analysis.to_dict(), indent=2))
        return 0
    loaded = analysis.traced.loaded
    shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in analysis.traced.inputs.items())
    where = f" (encoder at '{loaded.prefix[:-1]}')" if loaded.prefix else ""
    say(f"{type(loaded.module).__name__} from {loaded.source}{where}, traced on {shapes}", "")
    say(groups_table(analysis), "", *summary_lines(analysis))
    if args.dot is not None:
        say(f"wrote {args.dot} and {args.dot.with_suffix('.svg')}")
    return 0
