#!/usr/bin/env bash
# The README's imbalance study: joint vs CGGM vs the best unimodal model, cpu-small preset, on a
# synthetic dataset where FLAIR dominates. Usage: scripts/study.sh [OUT_DIR] (needs target/release/cggm;
# `make build` makes it). Prints a Markdown table; every run stays in OUT_DIR for inspection.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-/tmp/cggm-study}"
BIN="${CGGM_BIN:-target/release/cggm}"
SEEDS="${SEEDS:-0 1 2}"
EPOCHS="${EPOCHS:-6}"
STEPS="${STEPS:-25}"
mkdir -p "$OUT"
[ -d "$OUT/data" ] || "$BIN" synth --out "$OUT/data" --cases 24 --seed 1 --size 64x64x48 --imbalance 2.0
run() { # method seed
  local dir="$OUT/runs/${1//:/-}-s$2"
  mkdir -p "$OUT/runs"
  [ -f "$dir/metrics.json" ] && return 0
  rm -rf "$dir"
  "$BIN" train --data "$OUT/data" --method "$1" --preset cpu-small --epochs "$EPOCHS" \
    --steps-per-epoch "$STEPS" --seed "$2" --device cpu --out "$dir" --events "$dir.events.jsonl" 2>"$dir.log"
}
# Pick the best single modality on seed 0 (by validation mean Dice), then give it every seed.
for m in flair t1ce t1 t2; do run "unimodal:$m" 0; done
best=$(python3 - "$OUT" <<'PY'
import json, sys, glob
best = max(glob.glob(sys.argv[1] + "/runs/unimodal-*-s0/metrics.json"),
           key=lambda p: json.load(open(p))["best_val_dice"]["mean"])
print("unimodal:" + best.split("/runs/unimodal-")[1].split("-s0")[0])
PY
)
for s in $SEEDS; do
  for m in joint cggm "$best"; do run "$m" "$s"; done
done
python3 - "$OUT" "$best" <<'PY'
import json, sys, glob, statistics as st
out, best = sys.argv[1], sys.argv[2]
def cell(xs):
    return f"{st.mean(xs):.3f} ± {st.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"
print("| method | seeds | test WT | test TC | test ET | test mean | per-modality classifier Dice (mean of WT/TC/ET): flair / t1ce / t1 / t2 |")
print("|---|---|---|---|---|---|---|")
for m in ["joint", "cggm", best]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/runs/{m.replace(':','-')}-s*/metrics.json"))]
    runs = [r for r in runs if r.get("test")]
    if not runs:
        continue
    d = lambda k: [r["test"]["dice"][k] for r in runs]
    mods = []
    for name in ["flair", "t1ce", "t1", "t2"]:
        xs = [r["test"]["modality_dice"][name]["mean"] for r in runs if name in r["test"]["modality_dice"]]
        mods.append(cell(xs) if xs else "–")
    print(f"| {m} | {len(runs)} | {cell(d('wt'))} | {cell(d('tc'))} | {cell(d('et'))} | {cell(d('mean'))} | {' / '.join(mods)} |")
PY
