"""Why does aligning help (or not) here? Calibration size and group kinds, against the probes.

    python examples/table1/analyse.py          # ~5 min on a 2-core CPU, after make_data.py

Two studies next to Table I (results/analysis.md and results/analysis.json):

1. Calibration size: the paper policy solved from 64, 256 (the default) and 1024 requested clips
   (the corpora hold about 870 clips of 4 s, so the last uses them all): split-half agreement
   and matched correlation per kind, agreement with the permutations of the largest set, and
   the probe scores of the merge at weights 0.9 and 0.7.
2. Group kinds: aligning only the CNN, only the attention heads (+ vo channels), only the FFN,
   all three (the paper policy), or all three and the residual stream (which the paper leaves
   alone), each at weights 0.9 and 0.7, from the default 256 clips.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import probe
import torch
from run_table1 import CALIB, ENCODERS

from graphperm.merge import Alignment, finish_alignment, merge_models, prepare
from graphperm.policy import load_policy, resolve
from graphperm.solve import agreement
from graphperm.stats import calibrate
from graphperm.trace import load_model

HERE = Path(__file__).resolve().parent
SIZES = (64, 256, 1024)
WEIGHTS = (0.9, 0.7)
KINDS = {
    "cnn only": [{"kind": "conv", "site": "pre"}],
    "heads + vo only": [{"kind": "attn", "parts": ["heads", "vo"], "site": "post"}],
    "ffn only": [{"kind": "ffn", "site": "post"}],
    "all (paper)": None,
    "all + residual stream (not in the paper)": [
        {"kind": "conv", "site": "pre"},
        {"kind": "attn", "parts": ["heads", "vo"], "site": "post"},
        {"kind": "ffn", "site": "post"},
        {"kind": "residual"},
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    start = time.time()
    torch.manual_seed(0)
    logging.getLogger("probe").setLevel(logging.ERROR)
    a, b = load_model(ENCODERS / "speech"), load_model(ENCODERS / "music")
    cache = args.out / ".features"
    fbank = probe.evaluate("fbank", cache_dir=cache, progress=False)
    best = probe.best_accuracies(
        probe.evaluate(a.module, cache_dir=cache, progress=False),
        probe.evaluate(b.module, cache_dir=cache, progress=False),
    )
    chance = probe.chance_accuracies()

    def scores(alignment, weight: float) -> dict:
        model = merge_models(alignment, a, b, weight_a=weight).module()
        res = probe.evaluate(model, cache_dir=cache, progress=False)
        return {
            "accuracy": {t: round(m["accuracy"], 2) for t, m in res["tasks"].items()},
            "avg": round(probe.domain_scores(res, fbank, best)["avg"], 1),
            "avg_chance": round(probe.domain_scores(res, chance, best)["avg"], 1),
        }

    paper = load_policy("paper")
    alignments = {}
    for clips in SIZES:
        # The statistics also cover the residual stream's sites, for the last group-kind row.
        union = paper.model_dump()
        union["align"] = [*union["align"], {"kind": "residual"}]
        union["calibration"].update(num_clips=clips)
        union = load_policy(union)
        adapter, analysis, plan = prepare(a, union)
        _say(f"calibration: {clips} clips")
        stats, calibration = calibrate(analysis, plan, [a, b], adapter, CALIB)
        plan = resolve(paper, analysis)
        alignments[clips] = finish_alignment(analysis, plan, stats, calibration, {}, ("A", "B"))
    largest = alignments[SIZES[-1]]
    size_rows = []
    for clips, al in alignments.items():
        same = agreement(al.plan, al.analysis, al.perm, largest.perm)
        row = {
            "clips_requested": clips,
            "clips": al.calibration["clips"],
            "audio_s": round(al.calibration["seconds"], 1),
            **_by_kind(al.reports, "split_half_agreement"),
            **_by_kind(al.reports, "corr_after"),
            "agreement_with_largest": round(
                sum(same[r.name] * r.size for r in al.reports) / sum(r.size for r in al.reports), 4
            ),
        }
        for w in WEIGHTS:
            _say(f"  merge at {w} from {clips} clips")
            row[f"scores@{w}"] = scores(al, w)
        size_rows.append(row)

    base = alignments[256]
    kind_rows = []
    for name, align in KINDS.items():
        policy = paper.model_dump()
        if align is not None:
            policy["align"] = align
        policy = load_policy(policy)
        plan = resolve(policy, base.analysis)
        al = finish_alignment(base.analysis, plan, base.stats, base.calibration, {}, ("A", "B"))
        row = {"policy": name}
        for w in WEIGHTS:
            _say(f"{name} at {w}")
            row[f"scores@{w}"] = scores(al, w)
        kind_rows.append(row)

    linear = {}
    plain = Alignment.unaligned(
        base.analysis, resolve(load_policy("linear"), base.analysis), ("A", "B")
    )
    for w in WEIGHTS:
        linear[w] = scores(plain, w)
    data = {
        "command": "python examples/table1/analyse.py",
        "calibration_size": size_rows,
        "group_kinds": kind_rows,
        "linear": {str(w): v for w, v in linear.items()},
        "seconds": round(time.time() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "analysis.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "analysis.md").write_text(_markdown(data))
    print(_markdown(data))


def _by_kind(reports, field: str) -> dict:
    acc: dict[str, list[float]] = defaultdict(list)
    for r in reports:
        value = getattr(r, field)
        if value is not None:
            acc[r.kind].append(value)
    return {f"{field}_{k}": round(sum(v) / len(v), 3) for k, v in sorted(acc.items())}


def _markdown(data: dict) -> str:
    w0, w1 = WEIGHTS
    lines = [
        "# Why aligning helps (or not): calibration size and group kinds",
        "",
        f"Produced by `{data['command']}` in {data['seconds']:.0f} s. Scores: average Eq. 6, "
        "FBANK anchor (chance anchor in brackets); see table1.md.",
        "",
        "## Calibration size (paper policy)",
        "",
        "| clips | audio (s) | split-half agreement conv / attn / ffn | corr. after conv / attn /"
        f" ffn | same as largest | score @ {w0} | score @ {w1} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["calibration_size"]:
        sh = " / ".join(
            f"{r.get(f'split_half_agreement_{k}', float('nan')):.2f}"
            for k in ("conv", "attn", "ffn")
        )
        ca = " / ".join(
            f"{r.get(f'corr_after_{k}', float('nan')):.3f}" for k in ("conv", "attn", "ffn")
        )
        lines.append(
            f"| {r['clips']} | {r['audio_s']} | {sh} | {ca} | {r['agreement_with_largest']:.3f} | "
            + " | ".join(_score(r[f"scores@{w}"]) for w in WEIGHTS)
            + " |"
        )
    lines += [
        "",
        "## Which groups help (256 clips)",
        "",
        f"| aligned | score @ {w0} | score @ {w1} |",
        "|---|---|---|",
        "| nothing (linear) | "
        + " | ".join(_score(data["linear"][str(w)]) for w in WEIGHTS)
        + " |",
    ]
    for r in data["group_kinds"]:
        lines.append(
            f"| {r['policy']} | " + " | ".join(_score(r[f"scores@{w}"]) for w in WEIGHTS) + " |"
        )
    return "\n".join(lines) + "\n"


def _score(s: dict) -> str:
    return f"{s['avg']:.1f} ({s['avg_chance']:.1f})"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
