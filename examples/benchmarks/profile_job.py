"""Where the time of one ``graphperm merge`` goes: per stage and per kind of work.

    python examples/benchmarks/profile_job.py MODEL_A MODEL_B --calib DIR [--calib DIR ...] \
        [--policy specs/paper.yaml] [--weight-a 0.9] [--out profile.json] [MORE MERGE ARGS]

Runs the CLI's ``merge`` in this process with timers wrapped around the work (wall seconds;
torch's CPU ops are synchronous, so a timer around a call measures that call):

- reading audio (the calibration batches as they are produced), the statistics' cross products
  and sums (``SiteStats.update``) per site width, selecting valid frames; the forwards are the
  statistics pass less those;
- assignments (``match``) per matrix size, and the weight tie-break (undecided units,
  fingerprints, the re-assignment), also inside the forked workers (each process appends its
  timings to a file);
- the stages of the merge report (trace + analysis, statistics, solve, permute, verify,
  interpolate), loading and writing;
- CPU user / system seconds and minor page faults of each stage (this process and its
  workers), from ``getrusage``.

Prints a JSON summary (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

LOG = Path(tempfile.mkstemp(prefix="graphperm-profile-", suffix=".txt")[1])


def _note(kind: str, seconds: float) -> None:
    """One timing line, from whichever process measured it (forked workers too)."""
    with open(LOG, "a") as f:
        f.write(f"{kind}\t{seconds:.6f}\n")


def _timed(owner, name: str, kind) -> None:
    """Wrap ``owner.name`` so each call notes its wall seconds under ``kind(*args)``."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _note(kind(*args, **kwargs), time.perf_counter() - t)

    setattr(owner, name, wrapper)


def _usage() -> tuple[float, float, int]:
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return (
        me.ru_utime + kids.ru_utime,
        me.ru_stime + kids.ru_stime,
        me.ru_minflt + kids.ru_minflt,
    )


STAGES: dict[str, list[float]] = {}


def _stage(owner, name: str, label: str) -> None:
    """Wrap ``owner.name`` so each call adds its wall, user, system seconds and faults."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t, (u, s, f) = time.perf_counter(), _usage()
        try:
            return fn(*args, **kwargs)
        finally:
            u2, s2, f2 = _usage()
            row = STAGES.setdefault(label, [0.0, 0.0, 0.0, 0])
            for i, d in enumerate((time.perf_counter() - t, u2 - u, s2 - s, f2 - f)):
                row[i] += d

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--calib", action="append", required=True)
    parser.add_argument("--policy", default="specs/paper.yaml")
    parser.add_argument("--weight-a", default="0.9")
    parser.add_argument("--out", type=Path)
    args, rest = parser.parse_known_args()  # the rest goes to graphperm merge

    import graphperm.cli.merge_cmd as merge_cmd
    import graphperm.merge.pipeline as pipeline
    import graphperm.solve.assignment as assignment
    import graphperm.solve.solver as solver
    import graphperm.solve.tiebreak as tiebreak
    from graphperm.cli import main as cli
    from graphperm.stats.accumulate import SiteStats

    # modules a package re-export of a function of the same name hides
    calibrate = sys.modules["graphperm.stats.calibrate"]
    collect = sys.modules["graphperm.stats.collect"]

    width = lambda self, *a, **k: f"products+sums C={self.channels}"  # noqa: E731
    _timed(SiteStats, "update", width)
    _timed(collect, "valid_frames", lambda *a, **k: "valid frames")
    in_tiebreak = [False]

    def lsa(m, *a, **k):
        return f"{'tie-break re-' if in_tiebreak[0] else ''}assignment n={m.shape[0]}"

    _timed(assignment, "_match_array", lsa)
    for owner in (tiebreak, solver):
        _timed(owner, "undecided", lambda *a, **k: "tie-break: undecided units")
        _timed(owner, "fingerprints", lambda *a, **k: "tie-break: fingerprints")
    _timed(tiebreak, "decided", lambda *a, **k: "tie-break: decided pairs")
    for owner in (tiebreak, solver):
        real = owner.break_ties

        def break_ties(*a, real=real, **k):
            in_tiebreak[0] = True
            try:
                return real(*a, **k)
            finally:
                in_tiebreak[0] = False

        owner.break_ties = break_ties
    real_settle = solver.settle

    def settle(*a, **k):  # a large part's assignment and tie-break, in a worker
        in_tiebreak[0] = True
        t = time.perf_counter()
        try:
            return real_settle(*a, **k)
        finally:
            in_tiebreak[0] = False
            _note("settle (in a worker, all of it)", time.perf_counter() - t)

    solver.settle = settle

    real_collect = calibrate.collect

    def reading(batches):
        it = iter(batches)
        while True:
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            _note("reading + decoding + features", time.perf_counter() - t)
            yield b

    def wrapped_collect(analysis, sites, states, batches, **kw):
        return real_collect(analysis, sites, states, reading(batches), **kw)

    calibrate.collect = wrapped_collect
    _stage(pipeline, "calibrate", "statistics pass (calibrate)")
    _stage(pipeline, "finish_alignment", "solve")
    _stage(merge_cmd, "_setup", "load + trace + statistics + solve")
    _stage(merge_cmd, "merge_all", "permute + check + interpolate")
    _stage(merge_cmd, "save_merge", "write")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "merged"
        argv = ["merge", args.a, args.b, "--policy", args.policy, "--weight-a", args.weight_a]
        for c in args.calib:
            argv += ["--calib", c]
        argv += ["--out", str(out), "--force", "-q", *rest]
        t, (u, s, f) = time.perf_counter(), _usage()
        code = cli(argv)
        wall = time.perf_counter() - t
        u2, s2, f2 = _usage()
        report = json.loads((out / "merge_report.json").read_text())
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for line in LOG.read_text().splitlines():
        k, v = line.split("\t")
        kinds[k][0] += float(v)
        kinds[k][1] += 1
    LOG.unlink()
    timings = report["timings_s"]
    inside = sum(v for k, (v, _) in kinds.items() if k.startswith(("products", "valid", "read")))
    kinds["forwards (statistics pass less the above)"] = [timings["statistics_s"] - inside, 0]
    with open("/proc/self/status") as fh:
        hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM"))
    result = {
        "argv": argv,
        "exit": code,
        "load_average": os.getloadavg(),
        "wall_s": round(wall, 2),
        "user_s": round(u2 - u, 2),
        "system_s": round(s2 - s, 2),
        "minor_faults": f2 - f,
        "peak_rss_mb": round(int(hwm) / 1024, 1),
        "report_timings_s": timings,
        "stages": {
            k: {
                "wall_s": round(v[0], 2),
                "user_s": round(v[1], 2),
                "system_s": round(v[2], 2),
                "minor_faults": int(v[3]),
            }
            for k, v in STAGES.items()
        },
        "work_s": {
            k: {"seconds": round(v, 2), "calls": n}
            for k, (v, n) in sorted(kinds.items(), key=lambda kv: -kv[1][0])
        },
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    sys.exit(code)


if __name__ == "__main__":
    main()
