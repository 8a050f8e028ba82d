"""``graphperm models``: the built-in models (``builtin:NAME``, ``builtin:zoo/NAME``) and
policies a command accepts by name.

Example:
    >>> from graphperm.cli import main
    >>> main(["models"])  # doctest: +ELLIPSIS
    built-in models (random weights from a config; MODEL arguments take them as builtin:NAME)
    ...
    0
"""

from __future__ import annotations

import argparse

from graphperm.cli.common import say
from graphperm.demo import ENCODERS
from graphperm.policy import load_policy, policy_names
from graphperm.report import format_table
from graphperm.trace.builtin import BUILTINS, ZOO

HELP = "list the built-in models (builtin:NAME, builtin:zoo/NAME), demo encoders and policies"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help=HELP, description=HELP)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    rows = [[f"builtin:{name}", type(make()).__name__, ""] for name, make in BUILTINS.items()]
    rows += [
        [f"builtin:zoo/{name}", type(z.config()).__name__, z.modality] for name, z in ZOO.items()
    ]
    say(
        "built-in models (random weights from a config; MODEL arguments take them as builtin:NAME)",
        format_table(rows, ["model", "config", "modality"]),
        "",
        "trained encoders shipped for `graphperm demo` (folders any MODEL argument takes):",
        *(f"  {name}: {path}" for name, path in ENCODERS.items()),
        "",
        "built-in policies (--policy NAME):",
        format_table(
            [[name, load_policy(name).description] for name in policy_names()],
            ["policy", "what it does"],
        ),
    )
    return 0
