"""Does a clip's padding change the statistics, and what does running clips at their own length
cost? (issue 25)

    python examples/calibration/padding.py [--cost-clips 16] [--only PART] [--out FILE]

1. ``same_audio``: the shipped demo encoders (speech, music) aligned (policy ``paper``) on the
   shared speech cut into 0.7-s files, with ``clip_seconds`` 0.7 and 1.0 (the same audio) and,
   for comparison, 1.0 with every clip zero-padded to 1.0 s as graphperm did before (the
   fallback path). Counts the permutation entries that differ from the 0.7-s run.
2. ``cost``: HuBERT base (random weights), the statistics pass of the paper's policy over
   ``--cost-clips`` clips of 4 s of the shared speech and music, clips at their own length
   (equal-length batches, dynamic-length graph) against every clip padded to 4 s. CPU seconds
   of the whole ``calibrate`` call (the dynamic export and its check included), which stay
   meaningful on a loaded machine.

Uses ``../shared/data/audio``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import soundfile as sf

from graphperm.merge import align, prepare
from graphperm.policy import load_policy
from graphperm.stats import calibrate
from graphperm.trace import load_model

calibration = importlib.import_module("graphperm.stats.calibrate")  # the module, not the function
ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GRAPHPERM_SHARED", ROOT.parent / "shared"))
SPEECH, MUSIC = SHARED / "data/audio/speech", SHARED / "data/audio/music"
ENCODERS = ROOT / "graphperm/assets/encoders"


def _policy(name: str, **cal):
    policy = load_policy(name)
    update = {"num_clips": None, **cal}
    return policy.model_copy(update={"calibration": policy.calibration.model_copy(update=update)})


def _padded():
    """graphperm's old behaviour: every clip zero-padded to clip_seconds."""
    return mock.patch.object(calibration, "own_length_graph", lambda *a, **k: (None, None))


def _entries(alignment) -> dict[tuple[str, str], list[int]]:
    return {(g, p): t.flatten().tolist() for g, p, t in alignment.perm}


def _differ(x: dict, y: dict) -> int:
    return sum(a != b for k in x for a, b in zip(x[k], y[k], strict=True))


def same_audio(folder: Path) -> dict:
    for path in sorted(SPEECH.glob("*.flac")):
        wave, rate = sf.read(path, dtype="float32")
        step = round(0.7 * rate)
        for i in range(len(wave) // step):
            sf.write(folder / f"{path.stem}-{i:03d}.wav", wave[i * step : (i + 1) * step], rate)
    a, b = load_model(str(ENCODERS / "speech")), load_model(str(ENCODERS / "music"))
    runs = {}
    for name, seconds, padded in (
        ("0.7", 0.7, False),
        ("1.0", 1.0, False),
        ("1.0 padded", 1.0, True),
    ):
        policy = _policy("paper", clip_seconds=seconds)
        if padded:
            with _padded():
                runs[name] = align(a, b, policy, [folder], device="cpu")
        else:
            runs[name] = align(a, b, policy, [folder], device="cpu")
    base = _entries(runs["0.7"])
    total = sum(len(v) for v in base.values())
    return {
        "clips": runs["0.7"].calibration["clips"],
        "entries": total,
        "differ_1.0_own_length": _differ(base, _entries(runs["1.0"])),
        "differ_1.0_padded": _differ(base, _entries(runs["1.0 padded"])),
        "description_1.0": runs["1.0"].calibration["description"],
    }


def cost(clips: int) -> dict:
    a, b = load_model("builtin:hubert-base"), load_model("builtin:hubert-base", seed=1)
    policy = _policy("paper", num_clips=clips, clip_seconds=4.0)
    adapter, analysis, plan = prepare(a, policy)
    out = {}
    for name in ("own_length", "padded", "own_length_again"):
        cpu, wall = time.process_time(), time.perf_counter()
        if name == "padded":
            with _padded():
                stats, info = calibrate(
                    analysis, plan, [a, b], adapter, [SPEECH, MUSIC], device="cpu"
                )
        else:
            stats, info = calibrate(analysis, plan, [a, b], adapter, [SPEECH, MUSIC], device="cpu")
        out[name] = {
            "cpu_s": round(time.process_time() - cpu, 1),
            "wall_s": round(time.perf_counter() - wall, 1),
            "batches": stats.batches,
            "seconds": info["seconds"],
        }
    own = min(out["own_length"]["cpu_s"], out["own_length_again"]["cpu_s"])
    out["own_length_over_padded"] = round(own / out["padded"]["cpu_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-clips", type=int, default=16)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", choices=["same_audio", "cost"], help="run one part")
    args = parser.parse_args()
    results = {}
    if args.only in (None, "same_audio"):
        with tempfile.TemporaryDirectory() as tmp:
            results["same_audio"] = same_audio(Path(tmp))
    if args.only in (None, "cost"):
        results["cost"] = cost(args.cost_clips)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
