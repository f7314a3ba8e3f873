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
#
# Two arms beyond the methods (issue 20): `joint-lr-matched` is joint training with the encoders'
# learning rate times the mean B of the `cggm` run of the same seed (list it after `cggm`), so
# that CGGM's lower effective learning rate is not mistaken for balancing; `cggm-magnitude-fixed`
# (B_i scaling at the neutral constant, no L_gm) is an ordinary method.
# PROFILE=signal (default PROFILE=paper): settings where eps_i can carry a signal — tumour slices
# only, batch 32, the authors' fuller 3x3 classifiers, eps smoothed (eps_ema 0.9); with
# EPS_SOURCE=probe eps_i is measured on a fixed batch of validation slices (a departure from the
# paper). docs/study.md then reports the diagnostics (z) per arm.
# ENCODERS=separate  model.encoders for every run (default auto: grouped on a CPU for cpu-small;
#                    the studies in docs/ ran before that default, with separate encoders).
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
PROFILE="${PROFILE:-paper}"
EPS_SOURCE="${EPS_SOURCE:-batch}"
# auto (the default) groups cpu-small's encoders on a CPU; separate repeats studies run before it.
ENCODERS="${ENCODERS:-auto}"
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
case "$PROFILE" in
  paper) ;;
  signal)
    "$PY" - "$OUT/study-config.json" "$EPS_SOURCE" <<'PY'
import json, sys
path, eps_source = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
cfg["sampler"] = {"tumour_fraction": 1.0, "batch_size": 32}
cfg["model"] = {"classifier_design": "full"}
cfg["cggm"] = {"eps_ema": 0.9, "eps_source": eps_source, "probe_size": 32}
json.dump(cfg, open(path, "w"), indent=2)
PY
    ;;
  *) echo "PROFILE=$PROFILE: use paper or signal" >&2; exit 1 ;;
esac
if [ "$ENCODERS" != auto ]; then
  "$PY" - "$OUT/study-config.json" "$ENCODERS" <<'PY'
import json, sys
path, encoders = sys.argv[1], sys.argv[2]
cfg = json.load(open(path))
cfg.setdefault("model", {})["encoders"] = encoders
json.dump(cfg, open(path, "w"), indent=2)
PY
fi
run() { # arm seed
  local dir="$OUT/runs/${1//:/-}-s$2" method="$1" extra=()
  [ -f "$dir/metrics.json" ] && return 0
  if [ "$1" = joint-lr-matched ]; then
    # The mean B of this seed's CGGM run, over its modalities.
    local cggm="$OUT/runs/cggm-s$2/metrics.json"
    [ -f "$cggm" ] || { echo "joint-lr-matched needs the cggm run of seed $2 first: list cggm before it" >&2; exit 1; }
    local scale
    scale="$("$PY" -c 'import json,sys; b=json.load(open(sys.argv[1]))["mean_balance"]; print(sum(b.values())/len(b))' "$cggm")"
    method=joint extra=(--encoder-lr-scale "$scale")
  fi
  rm -rf "$dir"
  echo "training $1, seed $2 ${extra[*]}" >&2
  "$BIN" train --data "$OUT/data" --method "$method" --preset cpu-small --config "$OUT/study-config.json" \
    --epochs "$EPOCHS" --steps-per-epoch "$STEPS" --seed "$2" --device cpu --out "$dir" \
    --events "$dir.events.jsonl" "${extra[@]}" 2>"$dir.log"
}
for s in $SEEDS; do
  for m in $METHODS; do run "$m" "$s"; done
done
[ "$DOCS" = 1 ] && DOCS_DIR=docs || DOCS_DIR="$OUT"
"$PY" scripts/study_report.py "$OUT" "$DOCS_DIR" $METHODS
