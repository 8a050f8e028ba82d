"""The whole-model oracle on a local Whisper: merged encoder *and* decoder transcribe as A does.

B is A with every group of its encoder and decoder (the two residual streams, every attention
and FFN group, cross-attention included) permuted at random; `graphperm merge A B` (scope
`whole`, the default for encoder–decoders) aligns B back and merges 0.5/0.5, and the written
folder, loaded with `WhisperForConditionalGeneration.from_pretrained`, must generate A's tokens.
Nothing is downloaded: A is a local folder (default `../shared/models/whisper-tiny.en`).

Run from the repository root:

    python examples/whisper/whole.py                       # weight matching, no data
    python examples/whisper/whole.py --policy hybrid --calib ../shared/data/audio/speech
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
import torch
import transformers as tf

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def make_b(a_dir: Path, b_dir: Path, seed: int) -> int:
    """B = A with every group of the whole model permuted; returns how many groups."""
    from graphperm.apply import Indexer, permute_state, random_permutation
    from graphperm.merge import prepare
    from graphperm.policy import load_policy
    from graphperm.trace import load_model

    a = load_model(a_dir, scope="whole")
    _, analysis, plan = prepare(a, load_policy("weights"))
    indexer = Indexer(analysis)
    secret = random_permutation(indexer.shapes(), seed=seed)
    b = copy.deepcopy(a)
    b.module.load_state_dict(permute_state(indexer, a.state_dict(), secret))
    b.model.save_pretrained(b_dir)
    return len(plan.targets)


def transcribe(folder: Path, clips: list, extractor) -> list[list[int]]:
    model = tf.WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for wave in clips:
            x = extractor(wave, sampling_rate=16000, return_tensors="pt").input_features
            out.append(model.generate(input_features=x, max_new_tokens=48)[0].tolist())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=SHARED / "models" / "whisper-tiny.en")
    p.add_argument("--speech", type=Path, default=SHARED / "data" / "audio" / "speech")
    p.add_argument("--policy", default="weights", help="graphperm merge --policy")
    p.add_argument("--calib", type=Path, action="append", default=[])
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of each speech file")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "whole")
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    if not args.model.is_dir():
        raise SystemExit(f"{args.model} does not exist; pass --model a Whisper folder")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    groups = make_b(args.model, args.out / "b", args.seed)
    merged = args.out / "merged"
    cmd = [sys.executable, "-m", "graphperm", "merge", str(args.model), str(args.out / "b")]
    cmd += ["--policy", args.policy, "--weight-a", "0.5", "--out", str(merged), "--force"]
    cmd += [x for c in args.calib for x in ("--calib", str(c))]
    subprocess.run(cmd, check=True)
    config = tf.WhisperConfig.from_pretrained(args.model)
    extractor = tf.WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    files = sorted(args.speech.glob("*.flac"), key=lambda f: -sf.info(str(f)).duration)[:4]
    clips = []
    for f in files:
        wave, rate = sf.read(f, dtype="float32")
        if rate != 16000:
            continue
        clips.append(wave[: int(args.seconds * rate)])
    tokens = {
        name: transcribe(d, clips, extractor) for name, d in [("a", args.model), ("merged", merged)]
    }
    tok = tf.AutoTokenizer.from_pretrained(args.model)
    same = [x == y for x, y in zip(tokens["a"], tokens["merged"])]
    result = {
        "model": str(args.model),
        "policy": args.policy,
        "groups_permuted": groups,
        "clips": len(clips),
        "same_tokens": f"{sum(same)} of {len(same)}",
        "texts": [tok.decode(t, skip_special_tokens=True) for t in tokens["merged"]],
        "seconds": round(time.perf_counter() - start, 1),
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
