"""The ``graphperm`` command line.

Every user mistake ends with one line on stderr and exit code 2; library code logs, this prints.

Example:
    >>> main(["trace", "builtin:hubert-tiny", "--json"])   # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys

from graphperm import __version__
from graphperm.cli import (
    apply_cmd,
    demo_cmd,
    eval_cmd,
    merge_cmd,
    models_cmd,
    schema_cmd,
    shards_cmd,
    trace_cmd,
    verify_cmd,
)
from graphperm.cli.common import add_common_args, setup_logging
from graphperm.errors import GraphpermError

__all__ = ["build_parser", "main"]

COMMANDS = (
    trace_cmd,
    verify_cmd,
    merge_cmd,
    apply_cmd,
    eval_cmd,
    schema_cmd,
    demo_cmd,
    models_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphperm",
        description="Align and merge independently trained encoders by permuting hidden units.",
    )
    parser.add_argument("--version", action="version", version=f"graphperm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        add_common_args(command.add_parser(sub))
    add_common_args(merge_cmd.add_align_parser(sub))
    add_common_args(shards_cmd.add_parser(sub))
    add_common_args(shards_cmd.add_solve_parser(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except GraphpermError as err:
        print(f"graphperm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphperm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
