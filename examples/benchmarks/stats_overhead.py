"""What collecting statistics costs, relative to the two models' plain forward passes.

    python examples/benchmarks/stats_overhead.py [--clips 32] [--policy paper] [--json]

HuBERT base architecture (random weights, seeds 0 and 1), the shared calibration audio
(``../shared/data/audio``, speech and music), the policy's calibration settings. The audio is
read and batched once; then the same batches go (a) through A's and B's plain forward passes and
(b) through graphperm's statistics pass, alternately, ``--repeats`` times. The ratio of the
fastest (b) to the fastest (a) is ``stats_overhead_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from graphperm.data import CalibrationSet
from graphperm.merge.pipeline import prepare
from graphperm.policy import load_policy
from graphperm.stats import collect
from graphperm.trace import load_model

SHARED = Path(os.environ.get("GRAPHPERM_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:hubert-base")
    parser.add_argument("--policy", default="paper")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    policy = load_policy(args.policy)
    a, b = load_model(args.model, seed=0), load_model(args.model, seed=1)
    adapter, analysis, plan = prepare(a, policy)
    cal = policy.calibration
    data = CalibrationSet(
        [SHARED / "data/audio/speech", SHARED / "data/audio/music"],
        sample_rate=adapter.sample_rate,
        clip_seconds=cal.clip_seconds,
        num_clips=args.clips,
        seed=cal.seed,
    )
    batches = [adapter(batch, cal.batch_size) for batch in data.batches(cal.batch_size)]
    state_a, state_b = a.state_dict(), b.state_dict()
    sites = plan.sites()

    def forwards() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                a.module(**batch.inputs)
                b.module(**batch.inputs)
        return time.perf_counter() - start

    def statistics() -> float:
        start = time.perf_counter()
        collect(
            analysis,
            sites,
            state_a,
            state_b,
            batches,
            precision=cal.precision,
            max_frames_per_row=adapter.max_frames(cal.max_frame_rate),
        )
        return time.perf_counter() - start

    forwards()  # warm-up (allocator, first-call overheads)
    plain, stats = [], []
    for _ in range(args.repeats):
        plain.append(forwards())
        stats.append(statistics())
    seconds = sum(batch.seconds for batch in batches)
    result = {
        "model": args.model,
        "policy": args.policy,
        "audio_seconds": round(seconds, 1),
        "clips": len(data),
        "sites": len(sites),
        "forward_s": round(min(plain), 2),
        "statistics_s": round(min(stats), 2),
        "stats_overhead_ratio": round(min(stats) / min(plain), 3),
        "statistics_audio_s_per_s": round(seconds / min(stats), 2),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:26s} {v}")


if __name__ == "__main__":
    main()
