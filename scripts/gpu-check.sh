#!/usr/bin/env bash
# The GPU check: the project's CUDA path end to end, on a machine with a CUDA GPU and a PyTorch
# installation but no Rust toolchain and no network, with a prebuilt `cggm`
# (scripts/build-gpu-binary.sh builds one against that machine's PyTorch version; it loads that
# PyTorch's libtorch through LD_LIBRARY_PATH, set here). It runs, on synthetic data:
#   1. device detection (nvidia-smi, torch, and the binary's own view: `cggm bench parity`);
#   2. a short training of every method (tiny preset; bf16 autocast, the default on CUDA), one
#      with fp16 autocast and dynamic loss scaling, each writing its checkpoints;
#   3. the loss on the CPU and on the GPU from the same weights and batch (eval mode within 1e-2
#      relative: cuDNN may use TF32; and the first training step of each);
#   4. `cggm infer` from a trained run's checkpoint, and the inference time of one 240x240x155
#      case with the paper model;
#   5. a training of the paper preset (ResNet-101 x 4) at a realistic batch, loss going down
#      (CGGM: double backward through L_gm on the GPU);
#   6. joint and CGGM step times in fp32 and bf16 beside the PyTorch eager reference
#      (scripts/bench_torch.py) on the same GPU, with peak GPU memory; the same for the
#      feature-task model at paper-mosi's shapes (--quick: cpu-features).
# It prints a summary and writes summary.md, results.json and the full log under $OUT.
#
# Usage: scripts/gpu-check.sh [--binary PATH] [--device cuda:0] [--quick]
#   --binary  the prebuilt cggm-trainer (default target/gpu/cggm-trainer, else target/release/cggm-trainer)
#   --quick   small sizes everywhere: the dry run on a CPU is `--device cpu --quick`
# Environment: OUT (default target/gpu-check), PYTHON (a python with torch), PAPER_STEPS (200),
#   PAPER_BATCH (64), PAPER_CROP (160), BENCH_STEPS (3).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
binary=""
device="cuda:0"
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "unknown argument $1: use --binary PATH, --device DEV, --quick" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  for b in target/gpu/cggm-trainer target/release/cggm-trainer; do [ -x "$b" ] && binary="$b" && break; done
fi
[ -n "$binary" ] && [ -x "$binary" ] || {
  echo "no cggm binary: build one with scripts/build-gpu-binary.sh (or pass --binary PATH)" >&2
  exit 2
}
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
out="${OUT:-$root/target/gpu-check}"
mkdir -p "$out"
log="$out/gpu-check.log"
summary="$out/summary.md"
results="$out/results.json"
: >"$log"
work="$(mktemp -d "${TMPDIR:-/tmp}/cggm-gpu-check.XXXXXX")"

# A python with torch: $PYTHON, python3, or the lent machines' /opt/torch/.venv.
py="${PYTHON:-python3}"
if ! "$py" -c 'import torch' 2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then
  py=/opt/torch/.venv/bin/python3
fi
torch_lib="$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
if [ -n "$torch_lib" ]; then
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

if [ "$quick" = 1 ]; then
  paper_steps="${PAPER_STEPS:-4}"; paper_batch="${PAPER_BATCH:-2}"; paper_crop="${PAPER_CROP:-64}"
  paper_preset=cpu-small; bench_steps="${BENCH_STEPS:-2}"; infer_preset=tiny; infer_size=64x64x16
  tiny_size=48x48x16; paper_size=64x64x16
else
  paper_steps="${PAPER_STEPS:-200}"; paper_batch="${PAPER_BATCH:-64}"; paper_crop="${PAPER_CROP:-160}"
  paper_preset=paper; bench_steps="${BENCH_STEPS:-3}"; infer_preset=paper; infer_size=240x240x155
  tiny_size=64x64x16; paper_size=192x192x24
fi

declare -a lines=()
failures=0
note() { lines+=("$1"); echo "$1" | tee -a "$log"; }
# check NAME COMMAND...: runs it with its output in the log; records PASS/FAIL and seconds.
check() {
  local name="$1"; shift
  echo "=== $name: $*" >>"$log"
  local t0=$SECONDS
  if "$@" >>"$log" 2>&1; then
    note "PASS  $name ($((SECONDS - t0)) s)"
  else
    failures=$((failures + 1))
    note "FAIL  $name ($((SECONDS - t0)) s; see $(basename "$log"))"
  fi
}
# json FILE EXPR: a value out of a JSON document (the last one in FILE).
json() {
  "$py" - "$1" "$2" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
start = text.rfind("\n{\n") + 1 if "\n{\n" in text else text.find("{")
doc = json.loads(text[start:])
print(eval(sys.argv[2], {"d": doc}))
PY
}

note "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), device $device$([ "$quick" = 1 ] && echo ', quick'))"
note "binary: $binary"
{
  command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1
} | tee -a "$log" | while read -r l; do echo "  $l"; done
env_line="$("$py" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>/dev/null)"
lines+=("environment: $env_line")

# 1-2. Data and a short training of every method (tiny), bf16 autocast on CUDA.
check "synthetic data (tiny)" "$binary" synth --out "$work/tiny-data" --cases 6 --size "$tiny_size"
check "synthetic data (paper)" "$binary" synth --out "$work/paper-data" --cases 6 --size "$paper_size"
for method in joint cggm cggm-magnitude cggm-direction mrd mslr unimodal:flair; do
  check "train $method (tiny, bf16 autocast)" "$binary" train --data "$work/tiny-data" \
    --method "$method" --preset tiny --epochs 1 --steps-per-epoch 3 --val-cases 1 \
    --device "$device" --out "$work/run-${method/:/-}" --events "$work/run-${method/:/-}.events"
done
echo '{"amp_dtype": "fp16", "grad_clip": 5.0}' >"$work/fp16.json"
check "train cggm (tiny, fp16 + loss scaling, clipping)" "$binary" train --data "$work/tiny-data" \
  --method cggm --preset tiny --epochs 1 --steps-per-epoch 3 --val-cases 1 \
  --config "$work/fp16.json" --device "$device" --out "$work/run-fp16"
check "checkpoints written" test -f "$work/run-cggm/checkpoints/best.safetensors"

# 3. CPU against the device.
check "parity cpu vs $device (cpu-small, cggm)" sh -c \
  "'$binary' bench parity --preset cpu-small --method cggm --batch-size 2 --crop 64 --tolerance 1e-2 --device '$device' > '$work/parity.json'"
[ -s "$work/parity.json" ] && lines+=("  eval loss cpu $(json "$work/parity.json" 'd["eval_loss_cpu"]') vs device $(json "$work/parity.json" 'd["eval_loss_device"]') (relative $(json "$work/parity.json" '"%.1e" % d["eval_loss_relative_difference"]')); first step cpu $(json "$work/parity.json" '"%.5f" % d["first_step_loss_cpu"]') vs device $(json "$work/parity.json" '"%.5f" % d["first_step_loss_device"]')")

# 4. Inference from a checkpoint, and the time of a whole case.
case_dir="$(ls -d "$work"/tiny-data/*/ | head -n1)"
check "infer from the cggm run's checkpoint" "$binary" infer --checkpoint "$work/run-cggm" \
  --case "$case_dir" --out "$work/pred.nii.gz" --device "$device"
check "bench infer ($infer_preset, $infer_size)" sh -c \
  "'$binary' bench infer --preset $infer_preset --size $infer_size --repeats 2 --device '$device' > '$work/infer.json'"
[ -s "$work/infer.json" ] && lines+=("  inference of one $infer_size case ($infer_preset): $(json "$work/infer.json" '"%.3f" % d["seconds_per_case_median"]') s (median of 2; old path: $(json "$work/infer.json" '"%.2fx" % d["ratio_reference_over_default"]') slower)")

# 5. The paper preset at a realistic batch; the loss must go down.
check "train cggm ($paper_preset, batch $paper_batch, crop $paper_crop, $paper_steps steps, bf16)" \
  "$binary" train --data "$work/paper-data" --method cggm --preset "$paper_preset" --epochs 1 \
  --steps-per-epoch "$paper_steps" --batch-size "$paper_batch" --crop "$paper_crop" --val-cases 1 \
  --workers 8 --device "$device" --out "$work/run-paper" --events "$work/run-paper.events"
if [ -s "$work/run-paper.events" ]; then
  trend="$("$py" - "$work/run-paper.events" 2>&1 <<'PY'
import json, sys
losses = [e["loss"] for e in map(json.loads, open(sys.argv[1])) if e.get("event") == "step"]
if not losses:
    sys.exit("no training steps were recorded: NOT DOWN")
k = max(1, len(losses) // 10)
first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
print(f"{len(losses)} steps, mean loss of the first {k} {first:.4f} -> last {k} {last:.4f}", "DOWN" if last < first else "NOT DOWN")
PY
)"
  lines+=("  $trend")
  case "$trend" in *"NOT DOWN"*) failures=$((failures + 1)); note "FAIL  paper loss did not go down" ;; esac
fi

# 6. Step times beside PyTorch eager, fp32 and bf16.
for precision in fp32 bf16; do
  check "bench train $paper_preset $precision vs torch" sh -c \
    "'$binary' bench train --preset $paper_preset --batch-size $paper_batch --crop $paper_crop \
     --methods joint,cggm --steps $bench_steps --rounds 1 --precision $precision --device '$device' --against-torch \
     --python '$py' --torch-script '$root/scripts/bench_torch.py' > '$work/bench-$precision.json'"
  if [ -s "$work/bench-$precision.json" ]; then
    lines+=("  $precision: ours joint $(json "$work/bench-$precision.json" '"%.4f" % d["seconds_per_step"]["joint"]') s, cggm $(json "$work/bench-$precision.json" '"%.4f" % d["seconds_per_step"]["cggm"]') s (cggm/joint $(json "$work/bench-$precision.json" '"%.2f" % d["ratio_cggm_over_joint"]')); torch joint $(json "$work/bench-$precision.json" '"%.4f" % d["torch"]["seconds_per_step"]["joint"]') s, cggm $(json "$work/bench-$precision.json" '"%.4f" % d["torch"]["seconds_per_step"]["cggm"]') s; ours/torch joint $(json "$work/bench-$precision.json" '"%.2f" % d["ratio_joint_over_torch"]'), cggm $(json "$work/bench-$precision.json" '"%.2f" % d["ratio_cggm_over_torch"]')")
    lines+=("    memory: ours, each method alone $(json "$work/bench-$precision.json" '"GPU %s MiB (nvidia-smi), RSS %s MiB" % ({k: (v["gpu_memory_bytes"] or 0) >> 20 for k, v in d.get("alone", {}).items()}, {k: (v["peak_rss_bytes"] or 0) >> 20 for k, v in d.get("alone", {}).items()})'); torch $(json "$work/bench-$precision.json" '"GPU reserved %s MiB" % {k: v >> 20 for k, v in (d["torch"]["peak_gpu_reserved_bytes"] or {}).items()}')")
  fi
done

# 6b. The feature-task model (MOSI shapes, batch 64; --quick: cpu-features) beside PyTorch eager.
feature_preset="$([ "$quick" = 1 ] && echo cpu-features || echo paper-mosi)"
for precision in fp32 bf16; do
  f="$work/bench-features-$precision.json"
  check "bench train $feature_preset $precision vs torch" sh -c \
    "'$binary' bench train --preset $feature_preset --methods joint,cggm --steps $bench_steps \
     --rounds 1 --precision $precision --device '$device' --against-torch \
     --python '$py' --torch-script '$root/scripts/bench_torch.py' > '$f'"
  if [ -s "$f" ]; then
    lines+=("  $feature_preset $precision: ours joint $(json "$f" '"%.4f" % d["seconds_per_step"]["joint"]') s, cggm $(json "$f" '"%.4f" % d["seconds_per_step"]["cggm"]') s; torch joint $(json "$f" '"%.4f" % d["torch"]["seconds_per_step"]["joint"]') s, cggm $(json "$f" '"%.4f" % d["torch"]["seconds_per_step"]["cggm"]') s; ours/torch joint $(json "$f" '"%.2f" % d["ratio_joint_over_torch"]'), cggm $(json "$f" '"%.2f" % d["ratio_cggm_over_torch"]')")
  fi
done

status="$([ "$failures" = 0 ] && echo "all checks passed" || echo "$failures check(s) failed")"
{
  echo "## GPU check: $status"
  echo
  echo '```'
  printf '%s\n' "${lines[@]}"
  echo '```'
} >"$summary"
"$py" - "$work" "$results" <<'PY'
import glob, json, os, sys
work, dest = sys.argv[1], sys.argv[2]
docs = {}
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    text = open(path).read()
    try:
        docs[os.path.basename(path)] = json.loads(text[text.find("{"):])
    except ValueError:
        pass
json.dump(docs, open(dest, "w"), indent=1)
PY
echo
cat "$summary"
echo "(full log: $log; summary: $summary; numbers: $results)"
rm -rf "$work"
[ "$failures" = 0 ]
