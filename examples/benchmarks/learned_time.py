"""Time of `graphperm merge --policy learned` against the activations method alone on two
random-init HuBERT-base models (issue 21's time target: at most 3x).

    python examples/benchmarks/learned_time.py [--clips 128] [--policy specs/learned.yaml]
        [--budget 2.0] [--device cuda]

Both merges run here, one after the other, through the CLI (`--random-init`: HuBERT base's
configuration, A with seed 0 and B with seed 1), on `--clips` clips of 4 s of the shared speech
(/work/shared/data/audio/speech, or --calib: 46 s of speech give only a dozen clips; the timed
runs used ``--calib $PEER_HOME/calib/N128/clips``, the paper job's 128 clips). Writes
results-learned-time.json next to this file (or ``--out``).
``--budget B`` sets the policy's ``learn.budget`` (learning capped at B times the calibration's
forward passes, in floating-point operations counted as learning runs: each step with its
transforms of B's weights and its backward pass). ``--device`` is the CLI's (statistics and
learning on a GPU when there is one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--policy", default=str(ROOT / "specs" / "learned.yaml"))
    parser.add_argument("--calib", default="/work/shared/data/audio/speech")
    parser.add_argument("--out", type=Path, default=HERE / "results-learned-time.json")
    parser.add_argument("--budget", type=float, help="learn.budget (default: the policy's)")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where both merges run"
    )
    args = parser.parse_args()
    from transformers import HubertConfig

    source = args.policy
    with tempfile.TemporaryDirectory() as tmp:
        if args.budget is not None:  # the policy with its learning capped
            import yaml

            policy = yaml.safe_load(Path(args.policy).read_text())
            policy.setdefault("learn", {})["budget"] = args.budget
            args.policy = str(Path(tmp) / "policy.yaml")
            Path(args.policy).write_text(yaml.safe_dump(policy))
        model = Path(tmp) / "hubert-base"
        HubertConfig().save_pretrained(model)
        common = [str(model), str(model), "--random-init", "--seed-b", "1"]
        common += ["--calib", args.calib, "--num-clips", str(args.clips), "--force", "-q"]
        common += ["--device", args.device]
        runs = {}
        for name, extra in [
            ("activations", ["--policy", args.policy, "--method", "activations"]),
            ("learned", ["--policy", args.policy]),
        ]:
            out = Path(tmp) / name
            cmd = [sys.executable, "-m", "graphperm", "merge", *common, *extra, "--out", str(out)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            runs[name] = {"seconds": round(time.perf_counter() - t, 1), "command": cmd[1:]}
            report = json.loads((out / "merge_report.json").read_text())
            runs[name]["learn"] = report.get("method_report", {}).get("learn")
            print(f"{name}: {runs[name]['seconds']} s", file=sys.stderr, flush=True)
    ratio = runs["learned"]["seconds"] / runs["activations"]["seconds"]
    result = {
        "clips": args.clips,
        "policy": source,
        "budget": args.budget,
        "device": args.device,
        "runs": runs,
        "ratio": round(ratio, 2),
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"learned / activations: {ratio:.2f}x", file=sys.stderr)


if __name__ == "__main__":
    main()
