"""``graphperm demo``: a whole merge on built-in defaults, in about a minute on a CPU."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from graphperm.cli.common import say
from graphperm.cli.merge_cmd import _print_report
from graphperm.data.synth import write_clips
from graphperm.merge import align, merge_models, save_merge
from graphperm.trace import load_model

HELP = "run a whole merge of two small HuBERT-architecture encoders on built-in audio"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help=HELP, description=HELP)
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="keep the merged model here (default: a temporary folder)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "audio"
        write_clips(audio, count=24, seconds=2.0)
        say(
            "graphperm demo: merge two HuBERT-architecture encoders trained from different seeds",
            "  A = builtin:hubert-tiny (seed 0), B = builtin:hubert-tiny (seed 1)",
            "  calibration: 24 synthetic clips of 2 s (music and speech-like), policy: paper",
            "",
        )
        a = load_model("builtin:hubert-tiny", seed=0)
        b = load_model("builtin:hubert-tiny", seed=1)
        policy = {
            "align": [
                {"kind": "conv"},
                {"kind": "attn", "parts": ["heads", "vo"]},
                {"kind": "ffn"},
            ],
            "weight_a": 0.9,
            "calibration": {"clip_seconds": 2.0, "num_clips": 24},
        }
        alignment = align(a, b, policy, [audio], progress=not args.quiet, where="demo policy")
        result = merge_models(alignment, a, b, inplace=True)
        out = args.out or Path(tmp) / "merged"
        save_merge(result, out, force=args.out is None)
        _print_report(alignment)
        say(
            f"check: permuted B computes what B computed (max rel err {result.check.max_rel:.2g})",
            f"merged model written to {out}" + ("" if args.out else " (temporary)"),
            f"done in {time.perf_counter() - start:.1f} s",
        )
    return 0
