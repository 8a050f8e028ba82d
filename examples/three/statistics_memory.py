"""Bytes of the calibration statistics' accumulators for N models, as ``collect`` allocates
them (per site: shift, sums, squares as (N, C) float64; cross as (pairs, C, C) in the
accumulation dtype; times two with split-half), without running a forward.

    python examples/three/statistics_memory.py --model builtin:hubert-base --models 2 3 4

Pairs: N-1 (each model against A) by default; N(N-1)/2 with every pair (consensus refinement).
"""

from __future__ import annotations

import argparse

from graphperm.merge import prepare
from graphperm.policy import load_policy
from graphperm.stats.accumulate import reference_pairs
from graphperm.trace import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:hubert-base")
    parser.add_argument("--policy", default="paper")
    parser.add_argument("--models", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    policy = load_policy(args.policy)
    _, analysis, plan = prepare(load_model(args.model), policy)
    sites = {(s.key, s.dim) for s in plan.sites()}
    channels = [analysis.coupling.tensors[k].shape[d] for k, d in sites]
    cal = policy.calibration
    accum = 8 if cal.precision == "fp64" else 4
    halves = 2 if cal.split_half else 1
    print(f"{args.model}, policy {args.policy}: {len(sites)} sites, {sum(channels)} channels")
    for n in args.models:
        for every in (False, True):
            pairs = len(reference_pairs(n, every=every))
            total = halves * sum(3 * n * c * 8 + pairs * c * c * accum for c in channels)
            kind = "every pair" if every else "against A "
            print(f"N={n} {kind} ({pairs} pairs): {total / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
