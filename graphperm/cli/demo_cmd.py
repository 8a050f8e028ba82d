"""``graphperm demo``: merge a music encoder into a speech encoder, linear vs aligned, scored."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from graphperm.cli.common import print_alignment, say
from graphperm.demo import CALIBRATION, ENCODERS, load_probe_tasks
from graphperm.demo.probe import layer_features, probe_accuracy
from graphperm.merge import align, merge_models
from graphperm.output import save_merge
from graphperm.report.table import format_table
from graphperm.trace import load_model

HELP = "merge two small trained encoders (speech + music), linear vs aligned, and probe them"
WEIGHTS_A = (0.5, 0.9)  # uniform averaging, where plain interpolation collapses; the paper's


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    where = (
        f"{HELP}. The two encoders are save_pretrained folders shipped with graphperm, in "
        f"{ENCODERS['speech']} and {ENCODERS['music']} (any command takes them as MODEL); the "
        f"calibration clips and probe tasks are in {ENCODERS['speech'].parents[1] / 'demo'}."
    )
    p = sub.add_parser("demo", help=HELP, description=where)
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"also save the aligned merge at weight {WEIGHTS_A[-1]} here (save_pretrained folder)",
    )
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    a, b = load_model(str(ENCODERS["speech"])), load_model(str(ENCODERS["music"]))
    tasks = load_probe_tasks()
    params = sum(p.numel() for p in a.module.parameters()) / 1e6
    say(
        "graphperm demo: merge a music encoder into a speech encoder (examples/table1)",
        f"  A = speech encoder (HuBERT-style targets on speech), {params:.1f}M parameters",
        "  B = music encoder (MERT-style targets on music), same architecture, other seed",
        "  merged = w·A + (1 − w)·B at w = "
        + " and ".join(map(str, WEIGHTS_A))
        + ": as is (linear), then with B's units aligned to A's (paper policy)",
        "",
    )
    alignment = align(a, b, "paper", CALIBRATION, progress=not args.quiet, where="paper policy")
    print_alignment(alignment)
    plain = alignment.without_permutations()
    models = {"A (speech)": a.module, "B (music)": b.module}
    for w in WEIGHTS_A:
        aligned = merge_models(alignment, a, b, weight_a=w)
        models[f"linear {w}/{1 - w:.1f}"] = merge_models(plain, a, b, weight_a=w).module()
        models[f"aligned {w}/{1 - w:.1f}"] = aligned.module()
    say(f"check: permuted B computes what B computed (max rel err {aligned.check.max_rel:.2g})", "")

    rows = [[name] for name in models]
    for task in tasks:
        say(f"probing {task.name}: {task.description} ({len(task.clips)} clips)")
        for row, model in zip(rows, models.values()):
            feats = layer_features(model, task.clips)
            row.append(f"{probe_accuracy(feats, task.labels, task.train, len(task.classes)):.1f}")
    say(
        "",
        "probe accuracy (%): frozen encoder, learned weighted sum of layers, linear classifier",
        format_table(rows, ["encoder", *(f"{t.name} ({t.domain})" for t in tasks)]),
        "",
    )
    if args.out:
        save_merge(aligned, args.out, force=args.force)
        say(f"aligned merge written to {args.out}")
    say(f"done in {time.perf_counter() - start:.1f} s")
    return 0
