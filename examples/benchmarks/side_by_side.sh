#!/usr/bin/env bash
# The paper's job run by graphperm, then right after by the paper's code (FabianRitter/
# speech-ssl-merging at aa1885f, set up in $PEER_HOME as ../shared/peer/README.md says), on the
# same two random-init HuBERT bases and the same N clips of 4 s; wall and peak RSS of both, their
# ratios and the load average next to each.
# Usage: PEER_HOME=/work/peer bash examples/benchmarks/side_by_side.sh [N=128] [OUT=/tmp/side]
set -euo pipefail
N=${1:-128}
OUT=${2:-/tmp/side}
PEER_HOME=${PEER_HOME:-$HOME/.cache/graphperm-peer}
export PEER_HOME HF_HUB_OFFLINE=1
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEER="$(cd "$ROOT/../shared/peer" && pwd)"
mkdir -p "$OUT"
echo "graphperm: $(git -C "$ROOT" rev-parse --short HEAD), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -v -o "$OUT/gp_time.txt" python -m graphperm merge \
    "$PEER_HOME/models/hf_seed1" "$PEER_HOME/models/hf_seed2" \
    --policy "$ROOT/graphperm/specs/paper.yaml" --calib "$PEER_HOME/calib/N$N/clips" \
    --out "$OUT/gp_merged" --force --weight-a 0.9 -q > "$OUT/gp.log" 2>&1
gp_load=$(cut -d' ' -f1-3 /proc/loadavg)
bash "$PEER/bench.sh" "$N" > "$OUT/peer.log"
peer_load=$(cut -d' ' -f1-3 /proc/loadavg)
cp "$PEER_HOME/runs/N$N/time.txt" "$OUT/peer_time.txt"
python - "$OUT" "$gp_load" "$peer_load" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def read(name):
    text = (out / name).read_text()
    get = lambda key: next(l.split(": ", 1)[1] for l in text.splitlines() if key in l)
    h, *rest = get("Elapsed (wall clock)").split(":")
    wall = sum(float(x) * 60**i for i, x in enumerate(reversed([h, *rest])))
    return {
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(int(get("Maximum resident")) / 2**20, 3),
        "user_s": float(get("User time")),
        "system_s": float(get("System time")),
        "minor_faults": int(get("Minor (reclaiming")),
    }


gp, peer = read("gp_time.txt"), read("peer_time.txt")
gp["load_after"], peer["load_after"] = sys.argv[2], sys.argv[3]
report = json.loads((out / "gp_merged" / "merge_report.json").read_text())
gp["timings_s"] = report["timings_s"]
result = {
    "graphperm": gp,
    "paper_code": peer,
    "wall_ratio": round(peer["wall_s"] / gp["wall_s"], 2),
    "rss_ratio": round(peer["peak_rss_gib"] / gp["peak_rss_gib"], 2),
}
(out / "side_by_side.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
