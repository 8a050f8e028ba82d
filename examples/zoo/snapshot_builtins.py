"""Snapshot the groups (name, kind, structure) of every built-in model, to compare before/after.

Run: PYTHONPATH=$PWD python examples/zoo/snapshot_builtins.py OUT.json
     PYTHONPATH=$PWD python examples/zoo/snapshot_builtins.py OUT.json --compare BEFORE.json
"""

from __future__ import annotations

import argparse
import json
import sys

from graphperm.analysis import analyse
from graphperm.trace import BUILTINS, load_model, trace


def snapshot(names: list[str]) -> dict:
    out = {}
    for name in names:
        a = analyse(trace(load_model(f"builtin:{name}")))
        out[name] = [
            {"name": g.name, "kind": g.kind, "structure": g.structure, "tensors": len(g.tensors)}
            for g in a.groups
        ]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--compare")
    p.add_argument("--skip", nargs="*", default=["hubert-base"])
    args = p.parse_args()
    snap = snapshot([n for n in BUILTINS if n not in args.skip])
    with open(args.out, "w") as f:
        json.dump(snap, f, indent=1)
    if not args.compare:
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    bad = 0
    for name, groups in before.items():
        now = snap.get(name)
        if now != groups:
            bad += 1
            print(f"{name}: CHANGED")
            for g in groups:
                if g not in (now or []):
                    print("  -", g)
            for g in now or []:
                if g not in groups:
                    print("  +", g)
        else:
            print(f"{name}: same {len(groups)} groups")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
