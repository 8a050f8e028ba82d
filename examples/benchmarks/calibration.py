"""graphperm's performance on HuBERT base (random weights), against the issue's targets.

    python examples/benchmarks/calibration.py [--quick] [--json] [--out results.json]
    python examples/benchmarks/calibration.py --job [--clips 128] [--keep DIR] [--out F]

Measures, on this machine:

- ``trace_analysis_s``: trace + analysis of HuBERT base;
- ``forward_audio_s_per_s`` / ``statistics_audio_s_per_s`` and ``stats_overhead_ratio``: the
  statistics pass against A's and B's plain forward passes over the same (pre-read) batches;
- ``statistics_memory_mb``: the accumulators' size (split halves included);
- ``solve_s_by_kind``: solve time per group kind; ``apply_merge_s``: permute + check + merge;
- ``permutation_agreement``: fraction of channels the default (fast) path places exactly as the
  float64, every-frame reference does, overall and per kind;
- ``split_half_agreement_by_clips``: how far two halves of the data agree, as data grows;
- ``peak_rss_mb_by_scale``: peak memory of a whole ``graphperm merge`` at 1×, 4× and 16× the
  calibration data (fresh processes); the 16× run is also the end-to-end job
  (``end_to_end_s``: 128 clips of 4 s in the full run).

``--job`` measures only the issue's end-to-end job (``--clips`` clips, the policy's defaults)
and A's and B's plain forwards over the same audio, in wall and CPU seconds (CPU seconds and
ratios stay meaningful on a shared, loaded machine); ``--keep`` keeps the merged folder (its
``permutations.safetensors`` compares runs).

``--quick`` (under 3 minutes) uses fewer clips, skips the 4× merge, and runs the fresh-process
merges without split halves (so no agreement curve, and their peak RSS is the no-halves
figure). Uses ``../shared/data/audio`` (speech and music).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

from graphperm.inputs import adapter_for
from graphperm.merge import Alignment, finish_alignment, merge_models, prepare
from graphperm.policy import load_policy
from graphperm.solve import agreement, solve
from graphperm.stats import collect
from graphperm.stats.calibrate import own_length_graphs
from graphperm.trace import load_model

SHARED = Path(os.environ.get("GRAPHPERM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
AUDIO = [SHARED / "data/audio/speech", SHARED / "data/audio/music"]
MODEL = "builtin:hubert-base"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes instead of ~half hour")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON results here")
    parser.add_argument("--model", default=MODEL, help="(smoke tests: builtin:hubert-tiny)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (forwards and statistics)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--job",
        action="store_true",
        help="only the end-to-end job (--clips clips, the policy's defaults) and the plain "
        "forwards of A and B over the same audio, with CPU seconds (for a loaded machine)",
    )
    parser.add_argument("--clips", type=int, default=128, help="--job: clips of 4 s")
    parser.add_argument("--keep", type=Path, help="--job: copy the merge's output folder here")
    parser.add_argument(
        "--split-half", action="store_true", help="fresh-process merges with split halves"
    )
    args = parser.parse_args()
    model = args.model
    if not all(p.is_dir() for p in AUDIO):
        sys.exit(f"needs the shared audio in {AUDIO[0].parent} (set GRAPHPERM_SHARED)")
    if args.job:
        return _job(args)

    quick = args.quick
    clips = 4 if quick else 32  # in-process measurements
    scales = (1, 16) if quick else (1, 4, 16)
    base = 1 if quick else 8  # clips at 1x in the fresh-process runs
    result: dict = {
        "date": date.today().isoformat(),
        "machine": _machine(),
        "model": model,
        "policy": "paper",
        "quick": quick,
        "device": args.device,
        "precision": args.precision,
    }
    policy = load_policy("paper")
    cal = policy.calibration.model_copy(update={"precision": args.precision})
    policy = policy.model_copy(update={"calibration": cal})
    a, b = load_model(model, seed=0), load_model(model, seed=1)

    runs = []
    for _ in range(2 if quick else 4):
        t = time.perf_counter()
        adapter, analysis, plan = prepare(a, policy)
        runs.append(time.perf_counter() - t)
    result["trace_analysis_s"] = round(statistics.median(runs), 3)
    _say(f"trace + analysis: {result['trace_analysis_s']} s")

    cal = policy.calibration
    few = policy.model_copy(update={"calibration": cal.model_copy(update={"num_clips": clips})})
    adapter = adapter_for(a, few.calibration)
    data = adapter.calibration(AUDIO)
    batches = list(data.batches(cal.batch_size))
    # clips of one length per batch run through graphs exported with a dynamic length, as
    # graphperm's own calibrate does (None: the analysed graph, for padded batches)
    programs = own_length_graphs(analysis, plan, a, data.dynamic) if data.dynamic else None
    seconds = sum(x.positions for x in batches) / adapter.sample_rate
    state_a, state_b = dict(a.state_dict()), dict(b.state_dict())
    sites = plan.sites()
    fast = dict(
        precision=cal.precision,
        max_frames_per_row=adapter.max_steps(cal.max_frame_rate),
        split_half=cal.split_half,
        device=args.device,
        programs=programs,
    )
    dev_a = [a.module.to(args.device), b.module.to(args.device)]
    autocast = args.precision == "bf16"

    def forwards() -> float:
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast(args.device, torch.bfloat16, enabled=autocast):
            for x in batches:
                inputs = {k: v.to(args.device) for k, v in x.inputs.items()}
                for m in dev_a:
                    m(**inputs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    forwards()  # warm-up
    plain, stats_runs, stats = [], [], None
    for _ in range(1 if quick else 2):
        plain.append(forwards())
        t = time.perf_counter()
        stats = collect(analysis, sites, [state_a, state_b], batches, **fast)
        stats_runs.append(time.perf_counter() - t)
    result["calibration_audio_s"] = round(seconds, 1)
    result["forward_audio_s_per_s"] = round(seconds / min(plain), 3)
    result["statistics_audio_s_per_s"] = round(seconds / min(stats_runs), 3)
    result["stats_overhead_ratio"] = round(min(stats_runs) / min(plain), 3)
    result["statistics_memory_mb"] = round(
        sum(
            sum(
                t.numel() * t.element_size()
                for t in vars(s).values()
                if isinstance(t, torch.Tensor)
            )
            for part in stats.parts
            for s in part.values()
        )
        / 2**20,
        1,
    )
    _say(f"statistics / plain forwards: {result['stats_overhead_ratio']}")

    # One solve per kind (all its groups together, as a merge solves them, so the large
    # assignments share the worker processes); the plan's solve time is their sum.
    kinds: dict[str, list] = defaultdict(list)
    for t in plan.targets:
        kinds[t.kind].append(t)
    by_kind = {}
    for kind, targets in sorted(kinds.items()):
        t = time.perf_counter()
        solve(type(plan)(plan.policy, targets), analysis, stats, reports=False)
        by_kind[kind] = round(time.perf_counter() - t, 3)
    result["solve_s"] = round(sum(by_kind.values()), 3)
    result["solve_s_by_kind"] = by_kind
    _say(f"solve: {result['solve_s']} s {result['solve_s_by_kind']}")

    alignment = finish_alignment(analysis, plan, stats, {}, {}, (model, model))
    exact = collect(
        analysis, sites, [state_a, state_b], batches, precision="fp64", programs=programs
    )
    exact_perm, _ = solve(plan, analysis, exact, reports=False)
    agree = agreement(plan, analysis, alignment.perm, exact_perm)
    sizes = {g.name: g.size for g in analysis.groups}
    per_kind: dict[str, list[float]] = defaultdict(list)
    for g, v in agree.items():
        per_kind[next(iter(plan.by_group()[g].values())).kind].append(v)
    total = sum(agree[g] * sizes[g] for g in agree) / sum(sizes[g] for g in agree)
    result["permutation_agreement"] = round(total, 5)
    result["permutation_agreement_by_kind"] = {
        k: round(min(v), 5) for k, v in sorted(per_kind.items())
    }
    _say(f"fast vs exact agreement: {result['permutation_agreement']}")

    t = time.perf_counter()
    known = Alignment.from_permutations(analysis, plan, [alignment.perm], (model, model))
    a.module.to("cpu"), b.module.to("cpu")
    merge_models(known, a, b, inplace=True)
    result["apply_merge_s"] = round(time.perf_counter() - t, 3)
    a = b = state_a = state_b = stats = exact = None  # free memory before the subprocesses

    rss, curve, wall, timings = {}, {}, {}, {}
    for scale in scales:
        n = base * scale
        report, peak, elapsed = _merge_process(
            model,
            n,
            cal.batch_size,
            split_half=args.split_half,
            device=args.device,
            precision=cal.precision,
        )
        rss[f"{scale}x"] = peak
        wall[f"{scale}x"] = elapsed
        timings[f"{scale}x"] = report["timings_s"]
        halves = [g["split_half_agreement"] for g in report["groups"]]
        curve[n] = round(min(halves), 4) if args.split_half else None
        _say(f"{n} clips: peak RSS {peak} MB, {elapsed} s, lowest split-half agreement {curve[n]}")
    result["peak_rss_mb_by_scale"] = rss
    result["rss_growth_16x"] = round(rss["16x"] / rss["1x"] - 1, 3)
    result["split_half_agreement_by_clips"] = curve
    result["end_to_end"] = {
        "clips": base * 16,
        "clip_seconds": cal.clip_seconds,
        "wall_s": wall["16x"],
        "peak_rss_mb": rss["16x"],
        "timings_s": timings["16x"],
    }

    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for k, v in result.items():
            print(f"{k:32s} {v}")


def _job(args: argparse.Namespace) -> None:
    """The end-to-end job, and the plain forwards of A and B over the same audio: wall and CPU
    seconds of both (on a shared machine, compare ratios and CPU seconds, not wall times)."""
    policy = load_policy("paper")
    a, b = load_model(args.model, seed=0), load_model(args.model, seed=1)
    cal = policy.calibration.model_copy(update={"num_clips": args.clips})
    adapter = adapter_for(a, cal)
    batches = list(adapter.calibration(AUDIO).batches(cal.batch_size))
    with torch.no_grad():
        for m in (a.module, b.module):  # warm-up
            m(**batches[0].inputs)
        t, cpu = time.perf_counter(), time.process_time()
        for x in batches:
            for m in (a.module, b.module):
                m(**x.inputs)
        forwards = (time.perf_counter() - t, time.process_time() - cpu)
    a = b = batches = None
    before = _children_cpu()
    report, peak, elapsed = _merge_process(args.model, args.clips, cal.batch_size, keep=args.keep)
    merge_cpu = _children_cpu() - before
    timings = report["timings_s"]
    result = {
        "date": date.today().isoformat(),
        "machine": _machine(),
        "load_average": os.getloadavg(),
        "clips": args.clips,
        "forwards_s": round(forwards[0], 1),
        "forwards_cpu_s": round(forwards[1], 1),
        "end_to_end_s": elapsed,
        "end_to_end_cpu_s": round(merge_cpu, 1),
        "peak_rss_mb": peak,
        "timings_s": timings,
        "statistics_over_forwards": round(timings["statistics_s"] / forwards[0], 3),
        "end_to_end_over_forwards": round(elapsed / forwards[0], 3),
        "cpu_end_to_end_over_forwards": round(merge_cpu / forwards[1], 3),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _merge_process(
    model: str,
    clips: int,
    batch_size: int,
    split_half: bool | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    keep: Path | None = None,
) -> tuple[dict, float, float]:
    """A whole `graphperm merge` of two HuBERT-base models in a fresh process:
    (merge report, peak RSS in MB, wall seconds). ``split_half=None``: the policy's default;
    ``keep``: copy the output folder there."""
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        base = load_policy("paper").model_dump(mode="json")
        base["calibration"].update(num_clips=clips, batch_size=batch_size, precision=precision)
        if split_half is not None:
            base["calibration"]["split_half"] = split_half
        policy.write_text(json.dumps(base))
        out = Path(tmp) / "merged"
        rss_file = Path(tmp) / "rss"
        cmd = [
            sys.executable,
            "-c",
            _RSS_WRAPPER,
            str(rss_file),
            "merge",
            model,
            model,
            "--random-init",
            "--policy",
            str(policy),
            "--out",
            str(out),
            "-q",
            "--device",
            device,
        ]
        for p in AUDIO:
            cmd += ["--calib", str(p)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"graphperm merge failed: {proc.stderr[-2000:]}")
        report = json.loads((out / "merge_report.json").read_text())
        peak_kb = int(rss_file.read_text())
        if keep is not None:
            shutil.copytree(out, keep, dirs_exist_ok=True)
    return report, round(peak_kb / 1024, 1), round(elapsed, 1)


# Runs the CLI and records the process's own peak RSS: VmHWM, the high-water mark of this
# process's memory map. (getrusage's ru_maxrss would not do: Linux carries the parent's peak
# across fork + exec, so every child would report at least the benchmark's own peak.)
_RSS_WRAPPER = """
import sys
from graphperm.cli import main
out = sys.argv[1]
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    open(out, "w").write(hwm)
sys.exit(code)
"""


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"torch {torch.__version__}, bf16 matmul: {torch.backends.cpu.get_cpu_capability()}"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
