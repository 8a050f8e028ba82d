"""What the weight tie-break costs on one FFN-sized part, when most units are undecided (random
weights: correlations are noise) and when none are (a planted matching).

    python examples/benchmarks/tiebreak_cost.py [--n 3072] [--repeats 2]

Times, on the same matrices, the assignment alone (the tie-break off), the assignment followed
by :func:`graphperm.solve.tiebreak.break_ties` (how the tie-break ran before), and
:func:`graphperm.solve.tiebreak.settle` (decided pairs kept, one assignment of the rest), and
checks the last two give the same permutation.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from graphperm.solve import match
from graphperm.solve.tiebreak import break_ties, settle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n = args.n
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(n, 64, generator=g).add_(8.0)  # sorted slices: similar for every unit
    fb = torch.randn(n, 64, generator=g).add_(8.0)
    fa, fb = fa / fa.norm(dim=1, keepdim=True), fb / fb.norm(dim=1, keepdim=True)
    noise = torch.randn(n, n, generator=g, dtype=torch.float64) * 6e-3  # 128 clips of noise
    planted = noise.clone()
    truth = torch.randperm(n, generator=g)
    planted[torch.arange(n), truth] += 0.5
    out: dict = {"n": n, "load_average": os.getloadavg()}
    for name, corr in (("random (most undecided)", noise), ("planted (none undecided)", planted)):
        times: dict[str, list[float]] = {"assignment only": [], "before": [], "after": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            p = match(corr)
            times["assignment only"].append(time.perf_counter() - t)
            t = time.perf_counter()
            before, count_before = break_ties(corr.float(), match(corr), fa, fb, margin=1e-3)
            times["before"].append(time.perf_counter() - t)
            t = time.perf_counter()
            after, count = settle(corr.numpy().copy(), fingers=lambda: (fa, fb), margin=1e-3)
            times["after"].append(time.perf_counter() - t)
        out[name] = {
            **{k: round(min(v), 3) for k, v in times.items()},
            "undecided": count,
            "same_permutation": bool(torch.equal(before, after)) and count == count_before,
            "units_placed_as_before": round(float((before == after).float().mean()), 4),
            "matched_correlation_before_after": [
                round(float(corr[torch.arange(n), q].mean()), 6) for q in (before, after)
            ],
            "moved_vs_plain_assignment": round(float((after != p).float().mean()), 4),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
