#!/usr/bin/env bash
# Two ViT-architecture encoders merged on a folder of images (no image processor in the model
# folders: images are resized to the config's image_size and ImageNet-normalised). With no
# arguments: two seeded random-init tiny ViTs; or pass two model folders and an image folder.
#   bash examples/vit/run.sh [A B IMAGES]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/graphperm-vit}
images=${3:-$here/tests/data/images}
if [ $# -ge 2 ]; then a=$1; b=$2; else
  a=$out.a; b=$out.b
  python - "$a" "$b" <<'PY'
import sys
from graphperm.trace import load_model
for seed, folder in enumerate(sys.argv[1:]):
    load_model("builtin:vit-tiny", seed=seed).model.save_pretrained(folder)
PY
fi
python -m graphperm merge "$a" "$b" --policy fnn-attn --calib "$images" --out "$out" --force
head -n 30 "$out/README.md"
