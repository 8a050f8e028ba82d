"""Build the assets `graphperm demo` ships, from this study's data and checkpoints.

    python examples/table1/make_demo_assets.py [--tasks ks inst]

Writes graphperm/assets/demo/: calib/{speech,music}/*.ogg (4-s cuts of the pretraining
corpora, never used by a probe) and, per probe task, one Ogg Vorbis file holding its clips end
to end, plus probe.json (labels, split, clip length). The encoders themselves are written by
train.py straight into graphperm/assets/encoders/. Deterministic.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import audio
import soundfile as sf

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
OUT = HERE.parents[1] / "graphperm" / "assets" / "demo"
CALIB_CLIPS = 16  # per domain
CALIB_SECONDS = 4.0
DESCRIPTIONS = {
    "ks": "keyword spotting, 10 words, unseen espeak-ng voices",
    "sid": "speaker identification, 24 espeak-ng speakers, unseen sentences",
    "pitch": "pitch of a single note, 48 classes, unseen instruments",
    "inst": "instrument of a single note, 16 GM programs, unseen pitches",
    "genre": "style of a 2-s excerpt, 8 styles, unseen pieces",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["ks", "genre"], choices=sorted(DESCRIPTIONS))
    args = parser.parse_args()
    manifest = json.loads((DATA / "manifest.json").read_text())
    if OUT.exists():
        shutil.rmtree(OUT)
    for domain in ("speech", "music"):
        files = [f for f in manifest["corpora"][domain] if not Path(f).is_absolute()]
        folder = OUT / "calib" / domain
        folder.mkdir(parents=True)
        step = max(1, len(files) // CALIB_CLIPS)
        for i, rel in enumerate(files[::step][:CALIB_CLIPS]):
            wave = audio.read(DATA / rel)[: int(CALIB_SECONDS * audio.SR)]
            sf.write(
                folder / f"{domain}_{i:02d}.ogg", wave, audio.SR, format="OGG", subtype="VORBIS"
            )
    index = {}
    for task in args.tasks:
        spec = manifest["tasks"][task]
        waves = [audio.read(DATA / c["path"]) for c in spec["clips"]]
        samples = len(waves[0])
        if any(len(w) != samples for w in waves):
            raise SystemExit(f"{task}: clips differ in length")
        # Ogg Vorbis: a fifth of FLAC's size; every encoder is probed on the same decoded audio.
        # Written clip by clip (one large write crashes libsndfile 1.2's Vorbis encoder).
        with sf.SoundFile(
            OUT / f"{task}.ogg", "w", audio.SR, 1, format="OGG", subtype="VORBIS"
        ) as f:
            for wave in waves:
                f.write(wave)
        index[task] = {
            "file": f"{task}.ogg",
            "domain": spec["domain"],
            "description": DESCRIPTIONS[task],
            "clip_samples": samples,
            "classes": spec["labels"],
            "labels": [c["label"] for c in spec["clips"]],
            "split": [c["split"] for c in spec["clips"]],
        }
    (OUT / "probe.json").write_text(json.dumps(index) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
