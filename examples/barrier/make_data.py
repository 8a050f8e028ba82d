"""The barrier testbed's data: pair (a)'s speech corpus and pair (b)'s images (deterministic).

    python examples/barrier/make_data.py [--jobs 2]

- speech: the speech pretraining corpus of `examples/table1` (espeak-ng sentences, 240 files of
  about 7.5 s, plus the real speech in /work/shared/data/audio/speech when it is there), written
  to examples/barrier/data/speech/ by table1's own code; the last `HELD_OUT` espeak files are
  held out for evaluating the loss (and never used for training or calibration). Needs
  `apt-get install -y espeak-ng`. About 1-2 minutes.
- images: nothing to write; `shapes.py` draws them on the fly from seeds.

Writes data/manifest.json: {"speech": {"train": [...], "test": [...]}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
sys.path.insert(0, str(HERE.parent / "table1"))

import make_data as table1_data  # noqa: E402  (examples/table1/make_data.py)

HELD_OUT = 24  # espeak files kept for the loss evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    start = time.time()
    table1_data.DATA = DATA  # write under examples/barrier/data, not table1's folder
    jobs, files, _ = table1_data.plan_speech_corpus()
    seconds = table1_data.run_jobs("speech corpus", jobs, args.jobs)
    espeak = [f for f in files if f.startswith("corpus/")]
    shared = [f for f in files if not f.startswith("corpus/")]
    manifest = {
        "speech": {
            "train": espeak[:-HELD_OUT] + shared,
            "test": espeak[-HELD_OUT:],
            "seconds": round(seconds, 1),
        }
    }
    (DATA / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {DATA}: {seconds / 60:.1f} min of speech in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
