#!/usr/bin/env bash
# GPU figures in one command (a few minutes on one CUDA GPU): HuBERT base and a Whisper
# encoder (the real whisper-tiny.en from ../shared, or WHISPER=folder, e.g. the whisper
# converted by examples/whisper/fetch_convert.py), --device cuda, fp32 and bf16.
# Results land in examples/benchmarks/gpu/*.json; copy the figures into results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=examples/benchmarks/gpu
mkdir -p "$out"
whisper=${WHISPER:-../shared/models/whisper-tiny.en}
for precision in fp32 bf16; do
  python examples/benchmarks/calibration.py --quick --device cuda --precision "$precision" \
    --json --out "$out/hubert-base-$precision.json" > /dev/null
  python examples/benchmarks/calibration.py --quick --device cuda --precision "$precision" \
    --model "$whisper" --json --out "$out/whisper-$precision.json" > /dev/null
done
python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:20s} stats/forwards {r['stats_overhead_ratio']:6.3f}  "
          f"audio s/s {r['statistics_audio_s_per_s']:8.1f}  solve {r['solve_s']:6.1f} s  "
          f"agreement {r['permutation_agreement']:.4f}  e2e {r['end_to_end']['wall_s']} s")
PY
