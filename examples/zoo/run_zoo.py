"""Trace, analyse and verify every model of the zoo; print one line each, optionally save JSON.

Run: PYTHONPATH=$PWD python examples/zoo/run_zoo.py [NAME ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from graphperm.analysis import analyse
from graphperm.apply import verify
from graphperm.errors import GraphpermError
from graphperm.trace import example_inputs, load_model, trace
from graphperm.trace.builtin import ZOO


def zoo_inputs(name: str, loaded):
    entry = ZOO[name]
    if entry.inputs is not None:
        return entry.inputs(loaded.config)
    return example_inputs(loaded, length=entry.length)


def run_one(name: str) -> dict:
    start = time.perf_counter()
    row: dict = {"name": name, "modality": ZOO[name].modality}
    try:
        scope = "whole" if ZOO[name].modality == "encoder-decoder" else "encoder"
        loaded = load_model(f"builtin:zoo/{name}", scope=scope)
        row["class"] = type(loaded.module).__name__
        a = analyse(trace(loaded, zoo_inputs(name, loaded)))
        report = verify(a, seed=0)
        row["ok"] = report.ok
        row["verify"] = report.summary() if hasattr(report, "summary") else report.max_rel
        row["counts"] = a.counts()
        row["groups"] = [(g.name, g.kind, g.structure) for g in a.groups]
        row["warnings"] = [w for w in a.warnings if w.startswith(("no rule", "the rule"))]
    except GraphpermError as err:
        row["ok"] = False
        row["error"] = str(err)
    except Exception as err:  # a zoo run reports every failure
        row["ok"] = False
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("names", nargs="*")
    p.add_argument("--json")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows = []
    for name in args.names or list(ZOO):
        row = run_one(name)
        rows.append(row)
        status = "ok" if row["ok"] else "FAIL"
        print(
            f"{name:20s} {status:4s} {row['seconds']:6.2f}s {row.get('counts', '')} "
            f"{row.get('error', '')[:200]}",
            flush=True,
        )
        for w in row.get("warnings", []):
            print("    ", w[:160])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
