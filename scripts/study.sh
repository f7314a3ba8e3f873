#!/usr/bin/env bash
# The README's imbalance study, as one command: joint training vs CGGM vs the fixed-B control
# (cggm-fixed: CGGM's scaling and L_gm with every B_i held at rho(M-1)/M), optionally the OGM-GE /
# AGM / PMR baselines, on a synthetic BraTS-style dataset where FLAIR dominates. Segmentation is
# trained as the paper does, with SGD (momentum 0.9, weight decay 3e-4, cosine 0.01 -> 0.001 after a
# warm-up), on the cpu-small model. Every seed gets its own split with >= 10 test cases; each method's
# test scores are compared with joint's on the same seed (paired differences, 95 % t intervals).
#
# Usage: scripts/study.sh [OUT_DIR]       (default /tmp/cggm-study)
# Writes OUT_DIR/runs/*, then docs/study.md (tables) and docs/study.png (figure) unless DOCS=0.
# Knobs (environment): SEEDS="0 1 2 3 4", METHODS="joint cggm cggm-fixed", EPOCHS=8, STEPS=20,
# CASES=48, SIZE=64x64x48, TEST_FRACTION=0.25, CGGM_BIN=target/release/cggm (`make build` makes it),
# CGGM_PYTHON (a python with scipy and pillow; scripts/with-torch.sh sets it), STUDY_NOTE (a line
# placed above the tables).
# Runs that finished (metrics.json present) are kept, so an interrupted study continues.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-/tmp/cggm-study}"
BIN="${CGGM_BIN:-target/release/cggm}"
PY="${CGGM_PYTHON:-python3}"
SEEDS="${SEEDS:-0 1 2 3 4}"
METHODS="${METHODS:-joint cggm cggm-fixed}"
EPOCHS="${EPOCHS:-8}"
STEPS="${STEPS:-20}"
CASES="${CASES:-48}"
SIZE="${SIZE:-64x64x48}"
TEST_FRACTION="${TEST_FRACTION:-0.25}"
DOCS="${DOCS:-1}"
[ -x "$BIN" ] || { echo "no $BIN: run \`make build\` or set CGGM_BIN" >&2; exit 1; }
mkdir -p "$OUT/runs"
[ -d "$OUT/data" ] || "$BIN" synth --out "$OUT/data" --cases "$CASES" --seed 1 --size "$SIZE" --imbalance 2.0
# The paper's optimiser for segmentation; a split with enough test cases.
cat >"$OUT/study-config.json" <<JSON
{
  "optimizer": {"kind": "sgd", "momentum": 0.9, "weight_decay": 0.0003},
  "schedule": {"lr": 0.01, "min_lr": 0.001, "warmup_epochs": 1, "warmup_start_lr": 0.0004,
               "classifier_lr": 0.006},
  "split": {"val_fraction": 0.15, "test_fraction": $TEST_FRACTION, "file": null},
  "val_cases": 4
}
JSON
run() { # method seed
  local dir="$OUT/runs/${1//:/-}-s$2"
  [ -f "$dir/metrics.json" ] && return 0
  rm -rf "$dir"
  echo "training $1, seed $2" >&2
  "$BIN" train --data "$OUT/data" --method "$1" --preset cpu-small --config "$OUT/study-config.json" \
    --epochs "$EPOCHS" --steps-per-epoch "$STEPS" --seed "$2" --device cpu --out "$dir" \
    --events "$dir.events.jsonl" 2>"$dir.log"
}
for s in $SEEDS; do
  for m in $METHODS; do run "$m" "$s"; done
done
[ "$DOCS" = 1 ] && DOCS_DIR=docs || DOCS_DIR="$OUT"
"$PY" scripts/study_report.py "$OUT" "$DOCS_DIR" $METHODS
