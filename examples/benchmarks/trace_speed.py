"""How long trace + analysis take (HuBERT base architecture, random weights, CPU).

    python examples/benchmarks/trace_speed.py [--model builtin:hubert-base] [--repeats 5] [--json]

Model construction (random init of 95M parameters) is not timed: it is not part of tracing.
The first export in a process pays a one-off warm-up (imports, dispatcher caches); it is reported
separately, and the figure of merit is the median of the following runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from graphperm.analysis import analyse
from graphperm.trace import load_model, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:hubert-base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = load_model(args.model)
    runs = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        traced = trace(loaded)
        mid = time.perf_counter()
        analysis = analyse(traced)
        end = time.perf_counter()
        runs.append({"trace_s": mid - start, "analysis_s": end - mid, "total_s": end - start})
    first, rest = runs[0], runs[1:]
    result = {
        "model": args.model,
        "groups": analysis.counts(),
        "first_run_s": round(first["total_s"], 3),
        "median_trace_s": round(statistics.median(r["trace_s"] for r in rest), 3),
        "median_analysis_s": round(statistics.median(r["analysis_s"] for r in rest), 3),
        "median_total_s": round(statistics.median(r["total_s"] for r in rest), 3),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:18s} {v}")


if __name__ == "__main__":
    main()
