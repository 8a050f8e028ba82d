#!/usr/bin/env bash
# Three HuBERT-architecture encoders merged in one pass: the two trained ones shipped with
# graphperm (speech, music) and a third of the same architecture (the speech encoder's config
# with fresh seeded weights: the hardest case, nothing in common with the others).
#   bash examples/three/run.sh [OUT]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/tmp/graphperm-three}
enc=$here/graphperm/assets/encoders
third=$out.third
python - "$enc/speech" "$third" <<'PY'
import sys
from graphperm.trace import load_model
load_model(sys.argv[1], random_init=True, seed=7).model.save_pretrained(sys.argv[2])
PY
cp "$enc/speech/preprocessor_config.json" "$third/"
python -m graphperm merge "$enc/speech" "$enc/music" "$third" \
  --weights 0.5 0.3 0.2 --calib "$here/graphperm/assets/demo/calib" --num-clips 32 \
  --out "$out" --force
python examples/three/statistics_memory.py --model builtin:hubert-base --models 2 3
