"""``graphperm schema``: the JSON Schema of policy files."""

from __future__ import annotations

import argparse
import json

from graphperm.cli.common import say
from graphperm.policy import Policy

HELP = "print the JSON Schema of policy files"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("schema", help=HELP, description=HELP)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    say(json.dumps(Policy.model_json_schema(), indent=2))
    return 0
