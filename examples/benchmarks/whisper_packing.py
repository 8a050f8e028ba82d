"""Whisper calibration with clips packed into the 30-s window, against one clip per window.

    python examples/benchmarks/whisper_packing.py [--clips 64] [--split-half] [--out F]

Uses the real ``../shared/models/whisper-tiny.en`` (A) and B = A with Gaussian noise on every
weight (``--noise``, default 10 % of each tensor's std), then permuted by a planted permutation
(so the correlations are informative but not trivial), the shared speech + music, and the paper
policy at 4-s clips. Reports ``statistics_s`` packed and unpacked, the time of A's and B's plain
forward passes over the same audio laid end to end in 30-s windows, their ratio, how many units
the packed and unpacked permutations place alike, and how many each puts back where the planted
permutation took them from (the right answer, which bounds their agreement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
from graphperm.inputs import adapter_for
from graphperm.merge import align, prepare
from graphperm.policy import load_policy
from graphperm.solve import agreement
from graphperm.stats import collect
from graphperm.trace import load_model

SHARED = Path(os.environ.get("GRAPHPERM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
MODEL = SHARED / "models/whisper-tiny.en"
AUDIO = [SHARED / "data/audio/speech", SHARED / "data/audio/music"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="B = A + this fraction of each weight tensor's std as Gaussian noise, permuted",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--same-batches",
        action="store_true",
        help="also time the statistics pass against A's and B's plain forwards over the very "
        "same packed batches (read beforehand), in wall and CPU seconds",
    )
    parser.add_argument("--packed-only", action="store_true", help="skip the unpacked run")
    parser.add_argument(
        "--split-half",
        action="store_true",
        help="also solve each half of the clips on its own, packed and unpacked, and report "
        "how far their permutations agree (the data's own noise, next to packed vs unpacked)",
    )
    args = parser.parse_args()
    a = load_model(str(MODEL))
    b = load_model(str(MODEL))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in b.module.parameters():
            t.add_(torch.randn(t.shape, generator=g) * args.noise * t.std().nan_to_num(0.0))
    base = load_policy("paper").model_dump()
    base["calibration"].update(num_clips=args.clips, split_half=False)
    _, analysis, _ = prepare(a, load_policy(base))
    ix = Indexer(analysis)
    planted = random_permutation(ix.shapes(), seed=1)
    b.module.load_state_dict(permute_state(ix, b.state_dict(), planted))
    same = _same_batches(a, b, load_policy(base), analysis) if args.same_batches else None
    if args.packed_only:
        policy = json.loads(json.dumps(base))
        al = align(a, b, policy, AUDIO)
        out = {"clips": al.calibration["clips"], "statistics_s_packed": al.timings["statistics_s"]}
        print(json.dumps({**out, **(same or {})}, indent=2))
        return
    runs = {}
    for pack in (True, False):
        policy = json.loads(json.dumps(base))
        policy["calibration"]["pack"] = pack
        policy["calibration"]["split_half"] = args.split_half
        t = time.perf_counter()
        al = align(a, b, policy, AUDIO)
        runs[pack] = (al, time.perf_counter() - t)
    packed, unpacked = runs[True][0], runs[False][0]
    seconds = packed.calibration["seconds"]
    windows = math.ceil(seconds / 30.0)
    x = torch.randn(1, 80, 3000)
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(windows):
            a.module(input_features=x)
            b.module(input_features=x)
    forwards = time.perf_counter() - t
    agree = agreement(packed.plan, packed.analysis, packed.perm, unpacked.perm)
    sizes = {gr.name: gr.size for gr in packed.analysis.groups}
    total = sum(agree[k] * sizes[k] for k in agree) / sum(sizes[k] for k in agree)
    found = {
        name: recovered(run.plan, run.analysis, planted, run.perm)
        for name, run in (("packed", packed), ("unpacked", unpacked))
    }
    result = {
        "clips": packed.calibration["clips"],
        "noise": args.noise,
        "audio_s": seconds,
        "statistics_s_packed": round(packed.timings["statistics_s"], 2),
        "statistics_s_unpacked": round(unpacked.timings["statistics_s"], 2),
        "plain_forwards_s": round(forwards, 2),
        "windows_end_to_end": windows,
        "ratio_packed": round(packed.timings["statistics_s"] / forwards, 3),
        "ratio_unpacked": round(unpacked.timings["statistics_s"] / forwards, 3),
        "permutation_agreement": round(total, 4),
        "permutation_agreement_min_group": round(min(agree.values()), 4),
        # the fraction of units each places where the planted permutation put them (B = A +
        # noise, permuted): how far each is from the right answer, not from the other
        **{
            f"planted_recovered_{name}": round(
                sum(f[k] * sizes[k] for k in f) / sum(sizes[k] for k in f), 4
            )
            for name, f in found.items()
        },
        **{
            f"planted_recovered_{name}_min_group": round(min(f.values()), 4)
            for name, f in found.items()
        },
        "agreement_per_group": {k: round(v, 4) for k, v in agree.items()},
        # units the correlations left undecided (dead, duplicated), matched on their weights
        "matched_on_weights_per_group": {
            name: {r.name: r.matched_on_weights for r in run.reports}
            for name, run in (("packed", packed), ("unpacked", unpacked))
        },
        "planted_recovered_per_group": {
            name: {k: round(v, 4) for k, v in f.items()} for name, f in found.items()
        },
    }
    if args.split_half:  # per group, then size-weighted like the agreement above
        for name, run in (("packed", packed), ("unpacked", unpacked)):
            halves = {r.name: r.split_half_agreement for r in run.reports}
            halves = {k: v for k, v in halves.items() if v is not None}
            result[f"split_half_{name}"] = round(
                sum(halves[k] * sizes[k] for k in halves) / sum(sizes[k] for k in halves), 4
            )
            result[f"split_half_{name}_min_group"] = round(min(halves.values()), 4)
            result[f"split_half_{name}_per_group"] = {k: round(v, 4) for k, v in halves.items()}
    result.update(same or {})
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def recovered(plan, analysis, planted: Permutation, found: Permutation) -> dict[str, float]:
    """Per aligned group, how many units ``found`` puts back where ``planted`` took them from:
    B = B0 @ T_planted, B' = B @ T_found, so units recovered = trace(T_planted @ T_found)
    over the group's site axes, as a fraction of their units."""
    ix = Indexer(analysis)
    out: dict[str, float] = {}
    for group, targets in plan.by_group().items():
        classes = {analysis.coupling.cls(s.key, s.dim) for t in targets.values() for s in t.sites}
        same = sum(float(torch.trace(ix.matrix(c, planted) @ ix.matrix(c, found))) for c in classes)
        out[group] = same / sum(ix.table.size(c) for c in classes)
    return out


def _same_batches(a, b, policy, analysis) -> dict:
    """Statistics pass vs plain forwards over the same packed batches, read beforehand (no
    audio decoding or feature extraction in either), wall and CPU seconds, interleaved."""
    cal = policy.calibration
    adapter = adapter_for(a, cal)
    batches = list(adapter.calibration(AUDIO).batches(cal.batch_size))
    _, _, plan = prepare(a, policy)
    states = [dict(a.state_dict()), dict(b.state_dict())]
    frames = adapter.max_steps(cal.max_frame_rate)

    def forwards() -> None:
        with torch.no_grad():
            for x in batches:
                a.module(**x.inputs)
                b.module(**x.inputs)

    def statistics() -> None:
        collect(analysis, plan.sites(), states, batches, max_frames_per_row=frames)

    forwards()  # warm-up
    wall, cpu = {"f": [], "s": []}, {"f": [], "s": []}
    for _ in range(2):
        for key, run in (("f", forwards), ("s", statistics)):
            t, c = time.perf_counter(), time.process_time()
            run()
            wall[key].append(time.perf_counter() - t)
            cpu[key].append(time.process_time() - c)
    return {
        "same_batches_windows": sum(x.inputs[adapter.input_name].shape[0] for x in batches),
        "same_batches_forwards_s": round(min(wall["f"]), 2),
        "same_batches_statistics_s": round(min(wall["s"]), 2),
        "same_batches_ratio_wall": round(min(wall["s"]) / min(wall["f"]), 3),
        "same_batches_ratio_cpu": round(min(cpu["s"]) / min(cpu["f"]), 3),
    }


if __name__ == "__main__":
    main()
