"""The paper's Table I (and Table II) in miniature: merge the two trained encoders under every
policy of ``specs/`` and score each merge with the probe benchmark.

    python examples/table1/run_table1.py            # ~15 min on a 2-core CPU, from the
                                                    # committed checkpoints (no training)

Model A is the speech encoder (HuBERT's role), model B the music encoder (MERT's role), as in
the paper. One calibration pass collects the statistics of every site any policy measures; each
policy then solves from them, B is permuted (and checked), the models are interpolated, and the
merged encoder is probed. Writes ``results/table1.json``, ``results/table1.md`` and
``results/weight_sweep.png`` (score against the weight of A, linear and aligned).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import probe
import torch

from graphperm.merge import Alignment, align, finish_alignment, merge_models, prepare
from graphperm.policy import load_policy, resolve
from graphperm.stats import calibrate
from graphperm.trace import load_model

HERE = Path(__file__).resolve().parent
ENCODERS = HERE.parents[1] / "graphperm" / "assets" / "encoders"
# The encoders' own pretraining corpora (as the paper calibrates on speech and music clips);
# make_data.py keeps every probe clip out of them.
CALIB = [HERE / "data" / "corpus" / "speech", HERE / "data" / "corpus" / "music"]
ROWS = [  # (Table I id, name, policy or None for an original model)
    (1, "Speech encoder (A, HuBERT's role)", None),
    (2, "Music encoder (B, MERT's role)", None),
    (3, "(A + B) / 2", "average"),
    (4, "0.9 A + 0.1 B", "linear"),
    (5, "Proposed: CNN + heads + vo + FFN", "paper"),
    (6, "CNN", "cnn"),
    (7, "CNN + FFN", "cnn-ff-only"),
    (8, "CNN + all (qk too)", "cnn-all"),
    (9, "heads + vo + FFN, no CNN", "fnn-attn"),
    (10, "Best in the barrier testbed: every group + residual", "best"),
    # issue 20: the paper code's other tools, on the paper policy's groups, at 0.9/0.1
    (11, "ZipIt! on CNN + vo (in matched heads) + FFN", "zipit"),
    (12, "ZipIt! on the CNN, permutations elsewhere (paper code's hybrid)", "zipit-cnn"),
    (13, "Proposed, Sinkhorn matching", "sinkhorn"),
    (14, "Proposed, symmetric matching on |corr|", "symmetric"),
    (15, "Proposed, then TIES (paper code's rule, quantile 0.8)", "paper-ties"),
    (16, "Proposed, then DARE (drop 0.5)", "paper-dare"),
    # issue 21: learned alignment (graphperm.learn) from row 10's alignment, at 0.9/0.1
    (17, "Row 10, then learned end to end (no labels)", "learned"),
]
# The best method of examples/barrier on its post-LN HuBERT pair (pair a, this architecture):
# every group graphperm finds (conv, attention heads/qk/vo, FFN) and the residual stream, matched
# on activation correlations (results/barrier.md there). HuBERT's residual stream is
# permutation-only (GELU(pos_conv) writes it), so `transform: orth` would change nothing here.
EVERY_GROUP = [
    {"kind": "conv", "role": "pre"},
    {"kind": "attn", "parts": ["heads", "vo"], "role": "post"},
    {"kind": "attn", "parts": ["qk"], "role": "pre"},
    {"kind": "ffn", "role": "post"},
    {"kind": "residual", "role": "post"},
]
POLICIES = {
    "best": {
        "version": 1,
        "description": "examples/barrier's best on post-LN HuBERT: every group + residual, 0.9/0.1",
        "align": EVERY_GROUP,
        "weight_a": 0.9,
    },
    # row 10's groups and transforms, then optimised through the merged model at 0.9/0.1 so
    # that its outputs follow the parents' (no labels; clips of their own lengths: the outputs
    # objective), the step size decayed to 0; it runs the models, so it calibrates on its own
    "learned": {
        "version": 1,
        "description": "row 10, then learned end to end (outputs, no labels), 0.9/0.1",
        "align": EVERY_GROUP,
        "method": "learned",
        "learn": {
            "start": "activations",
            "steps": 200,
            "lr": 0.02,
            "items": 64,
            "eval_every": 10,
            "schedule": "cosine",
        },
        "weight_a": 0.9,
    },
    **{
        f"paper-{how}": {
            **load_policy("paper").model_dump(mode="json"),
            "description": f"the paper policy, then {how.upper()}, 0.9/0.1",
            "combine": how,
        }
        for how in ("ties", "dare")
    },
}
SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SWEPT = ("linear", "paper", "best")
COMMAND = "python examples/table1/run_table1.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speech", type=Path, default=ENCODERS / "speech")
    parser.add_argument("--music", type=Path, default=ENCODERS / "music")
    parser.add_argument(
        "--calib",
        type=Path,
        action="append",
        default=None,
        help="calibration audio (default: data/corpus/speech + data/corpus/music)",
    )
    parser.add_argument("--clips", type=int, default=256, help="calibration clips")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-sweep", action="store_true", help="skip the weight sweep")
    parser.add_argument(
        "--rows", type=int, action="append", help="only these rows (and 1, 2, 5); default: all"
    )
    args = parser.parse_args()
    calib = args.calib or CALIB
    start = time.time()
    torch.manual_seed(0)
    logging.getLogger("probe").setLevel(logging.ERROR)  # FBANK-anchor warnings: see table1.md

    a, b = load_model(args.speech), load_model(args.music)
    union = _policy("best").model_dump()  # its sites include every other policy's
    union["calibration"].update(num_clips=args.clips, clip_seconds=4.0)
    union = load_policy(union)
    adapter, analysis, plan_all = prepare(a, union)
    _say(f"calibration: up to {args.clips} clips of 4 s from {', '.join(map(str, calib))}")
    # one pass for every row: each model with itself too, for ZipIt! (rows 11-12); the A-B
    # statistics every other row reads are the same sums either way
    stats, calibration = calibrate(
        analysis, plan_all, [a, b], adapter, calib, progress=True, within=True
    )

    cache = args.out / ".features"
    fbank = probe.evaluate("fbank", cache_dir=cache, name="FBANK")
    originals = {
        1: probe.evaluate(a.module, cache_dir=cache, name="speech"),
        2: probe.evaluate(b.module, cache_dir=cache, name="music"),
    }
    best = probe.best_accuracies(originals[1], originals[2])
    chance = probe.chance_accuracies()

    def evaluate_merge(policy_name: str, weight: float | None = None) -> tuple[dict, Alignment]:
        policy = _policy(policy_name)
        if weight is not None:
            policy = policy.model_copy(update={"weight_a": weight})
        plan = resolve(policy, analysis)
        if policy.method == "learned":  # the models run while learning: graphperm's own route
            policy = policy.model_copy(
                update={"calibration": union.calibration.model_copy()}, deep=True
            )
            alignment = align(a, b, policy, list(calib), where=policy_name)
        elif plan.targets:
            alignment = finish_alignment(
                analysis,
                plan,
                stats,
                calibration,
                {},
                (str(args.speech), str(args.music)),
                states=[a.state_dict(), b.state_dict()],  # weights/hybrid methods read them
            )
        else:
            alignment = Alignment.unaligned(analysis, plan, (str(args.speech), str(args.music)))
        model = merge_models(alignment, a, b).module()
        name = f"{policy_name}@{policy.weight_a:g}"
        return probe.evaluate(model, cache_dir=cache, name=name), alignment

    rows, alignments = [], {}
    for row_id, title, policy_name in ROWS:
        if args.rows and row_id not in {*args.rows, 1, 2, 5}:  # McNemar reads row 5
            continue
        _say(f"row {row_id}: {title}")
        if policy_name is None:
            result = originals[row_id]
        else:
            result, alignments[policy_name] = evaluate_merge(policy_name)
        rows.append(_row(row_id, title, policy_name, result, fbank, best, chance))
        reports = getattr(alignments.get(policy_name), "method_reports", None) or []
        if reports and "learn" in reports[0]:  # what learning did (row 17)
            rows[-1]["learn"] = reports[0]["learn"]
    paper = next(r for r in rows if r["id"] == 5)
    for r in rows:
        r["mcnemar_vs_paper"] = {
            t: probe.mcnemar(r["tasks"][t]["correct"], paper["tasks"][t]["correct"])
            for t in probe.TASKS
        }
        r["bootstrap_vs_paper"] = {
            t: probe.paired_bootstrap(r["tasks"][t]["correct"], paper["tasks"][t]["correct"])
            for t in probe.TASKS
        }
        # across the tasks of one row: Benjamini–Hochberg on the McNemar p-values
        q = probe.benjamini_hochberg([r["mcnemar_vs_paper"][t] for t in probe.TASKS])
        r["mcnemar_bh_vs_paper"] = dict(zip(probe.TASKS, q))

    sweep: dict[str, list] = {"weight_a": list(SWEEP), **{m: [] for m in SWEPT}}
    if not args.no_sweep:
        for w in SWEEP:
            for method in SWEPT:
                _say(f"sweep: {method} at weight {w}")
                res, _ = evaluate_merge(method, w)
                sweep[method].append(
                    {
                        **probe.domain_scores(res, fbank, best),
                        **_suffixed(probe.domain_scores(res, chance, best), "_chance"),
                    }
                )

    args.out.mkdir(parents=True, exist_ok=True)
    table2 = _table2(alignments["paper"])
    data = {
        "command": COMMAND,
        "checkpoints": {
            "A": str(args.speech.relative_to(HERE.parents[1])),
            "B": str(args.music.relative_to(HERE.parents[1])),
        },
        "calibration": calibration,
        "fbank": _row(0, "FBANK", None, fbank, fbank, best, chance),
        "best": best,
        "chance": chance,
        "rows": rows,
        "table2": table2,
        "paper_alignment": [r.to_dict() for r in alignments["paper"].reports],
        "sweep": sweep,
        "seconds": round(time.time() - start, 1),
    }
    for r in [*rows, data["fbank"]]:  # the per-clip vectors make the JSON unreadable
        for t in r["tasks"].values():
            t["correct"] = "".join(map(str, t["correct"]))
    (args.out / "table1.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "table1.md").write_text(_markdown(data))
    if not args.no_sweep:
        _plot(sweep, args.out / "weight_sweep.png")
    _say(f"done in {time.time() - start:.0f} s; results in {args.out}")
    print(_markdown(data).split("## Table II")[0])


def _policy(name: str):
    """A policy of ``specs/`` by name, or one of :data:`POLICIES`."""
    return load_policy(POLICIES.get(name, name))


def _row(
    row_id: int,
    title: str,
    policy: str | None,
    result: dict,
    fbank: dict,
    best: dict,
    chance: dict,
) -> dict:
    """One table row: per-task accuracies, Eq. 6 scores anchored on FBANK (the paper's) and on
    the majority-class accuracy (``*_chance``: meaningful also where FBANK beats A and B)."""
    scores = probe.domain_scores(result, fbank, best)
    scores |= _suffixed(probe.domain_scores(result, chance, best), "_chance")
    return {
        "id": row_id,
        "name": title,
        "policy": policy,
        "tasks": {
            t: {"accuracy": round(m["accuracy"], 2), "correct": m["correct"], "n_test": m["n_test"]}
            for t, m in result["tasks"].items()
        },
        **{k: round(v, 2) for k, v in scores.items()},
    }


def _suffixed(scores: dict, suffix: str) -> dict:
    return {f"{k}{suffix}": v for k, v in scores.items()}


def _table2(alignment: Alignment) -> dict:
    """Percent of B's units moved per section, as the paper's Table II."""
    by: dict[str, list[float]] = {
        "cnn_layer_0": [],
        "cnn_layers_1_plus": [],
        "attention": [],
        "ffn": [],
    }
    for r in alignment.reports:
        if r.kind == "conv":
            key = "cnn_layer_0" if not by["cnn_layer_0"] else "cnn_layers_1_plus"
            by[key].append(r.moved_fraction)
        elif r.kind == "attn":
            by["attention"].append(r.moved_fraction)
        elif r.kind == "ffn":
            by["ffn"].append(r.moved_fraction)
    return {k: round(100 * sum(v) / len(v), 2) if v else None for k, v in by.items()}


def _markdown(data: dict) -> str:
    tasks = list(probe.TASKS)
    paper = next(r for r in data["rows"] if r["id"] == 5)
    linear = next(r for r in data["rows"] if r["id"] == 4)
    head = (
        "| ID | Upstream | "
        + " | ".join(tasks)
        + " | Speech | Music | Avg | Speech (chance) | Music (chance) | Avg (chance) |"
    )
    lines = [
        "# Table I in miniature",
        "",
        f"Produced by `{data['command']}` from the committed checkpoints in "
        f"{data['seconds']:.0f} s. A = `{data['checkpoints']['A']}` (speech, HuBERT's role), "
        f"B = `{data['checkpoints']['B']}` (music, MERT's role). Calibration: "
        f"{data['calibration'].get('description', '')}. Accuracies in %; scores are the paper's "
        "Eq. 6 (per task, normalised between FBANK and the better of A and B, ×1000); the "
        "`(chance)` columns anchor Eq. 6 on the majority-class accuracy instead, which stays "
        "meaningful on tasks where FBANK beats both encoders (there the FBANK-anchored term "
        "runs backwards). "
        "`*`: McNemar's test against row 5 (the paper's policy) gives p < 0.05; `†`: it still "
        "does after Benjamini–Hochberg across the row's tasks (q < 0.05). The paired bootstrap's "
        "p-values are in `results/table1.json` (`bootstrap_vs_paper`).",
        "",
        head,
        "|" + "---|" * (len(tasks) + 8),
    ]
    for r in [data["fbank"], *data["rows"]]:
        cells = []
        for t in tasks:
            mark = ""
            if r["id"] not in (0, 5) and r.get("mcnemar_vs_paper", {}).get(t, 1.0) < 0.05:
                mark = "*"
                if r.get("mcnemar_bh_vs_paper", {}).get(t, 1.0) < 0.05:
                    mark = "*†"
            cells.append(f"{r['tasks'][t]['accuracy']:.1f}{mark}")
        ident = r["id"] or "–"
        lines.append(
            f"| {ident} | {r['name']} | "
            + " | ".join(cells)
            + f" | {r['speech']:.1f} | {r['music']:.1f} | {r['avg']:.1f}"
            + f" | {r['speech_chance']:.1f} | {r['music_chance']:.1f} | {r['avg_chance']:.1f} |"
        )
    lines += [
        "",
        f"Row 5 − row 4 (aligned − linear at 0.9/0.1): "
        f"{paper['avg'] - linear['avg']:+.1f} average score "
        f"({paper['avg_chance'] - linear['avg_chance']:+.1f} with the chance anchor).",
        "",
    ]
    t2 = data["table2"]
    lines += [
        "## Table II: percent of B's units moved by the paper's policy",
        "",
        "| Section | % moved |",
        "|---|---|",
        f"| CNN layer 0 | {t2['cnn_layer_0']} |",
        f"| CNN layers 1+ (avg) | {t2['cnn_layers_1_plus']} |",
        f"| Attention heads + vo channels (avg) | {t2['attention']} |",
        f"| FFN hidden units (avg) | {t2['ffn']} |",
        "",
        "## Alignment of the paper's policy, per group",
        "",
        "| Group | Kind | Moved | Corr. before | Corr. after | Split-half agreement |",
        "|---|---|---|---|---|---|",
    ]
    for g in data["paper_alignment"]:
        lines.append(
            f"| {g['name']} | {g['kind']} | {100 * g['moved_fraction']:.1f}% | "
            f"{g['corr_before']:.3f} | {g['corr_after']:.3f} | "
            f"{g['split_half_agreement']} |"
        )
    if data["sweep"]["linear"]:
        lines += [
            "",
            "## Weight sweep (average score; chance anchor in brackets)",
            "",
            "| weight of A | " + " | ".join(f"{w:g}" for w in data["sweep"]["weight_a"]) + " |",
            "|---|" + "---|" * len(data["sweep"]["weight_a"]),
        ]
        for m in SWEPT:
            lines.append(
                f"| {m} | "
                + " | ".join(f"{s['avg']:.1f} ({s['avg_chance']:.1f})" for s in data["sweep"][m])
                + " |"
            )
        lines += ["", "![score against the weight of A](weight_sweep.png)"]
    return "\n".join(lines) + "\n"


def _plot(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharex=True)
    for ax, key in zip(axes, ("avg", "speech", "music")):
        for method, style in (("linear", "o--"), ("paper", "s-"), ("best", "^-")):
            if not sweep.get(method):
                continue
            label = {
                "linear": "linear interpolation",
                "paper": "aligned (paper policy)",
                "best": "aligned (every group + residual)",
            }[method]
            ax.plot(
                sweep["weight_a"], [s[f"{key}_chance"] for s in sweep[method]], style, label=label
            )
        ax.set_title(f"{key} score (Eq. 6, chance anchor)")
        ax.set_xlabel("weight of A (speech encoder)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Eq. 6 score")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Merging the music encoder into the speech encoder")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
