#!/usr/bin/env bash
# Builds a stripped release `cggm-trainer` (the libtorch half of `cggm`: train, eval, infer, bench) for a GPU machine that has PyTorch but no Rust toolchain and no
# network (what scripts/gpu-check.sh runs there). The binary links against the libtorch of the
# PyTorch *on that machine* (default 2.11.0, CUDA 13, as on the lent H200s): at run time it loads
# that installation's libraries through LD_LIBRARY_PATH, so nothing but the ~11 MB binary travels.
#
#   scripts/build-gpu-binary.sh [OUTPUT]        (default: target/gpu/cggm-trainer, ignored by git)
#   TORCH_VERSION=2.11.0  GPU_BUILD_DIR=~/.cache/cggm-gpu   (environment, optional)
#
# How, and why each step:
# 1. The PyPI torch wheel of that version (the same build as the machine's) is downloaded once and
#    only its torch/ folder (headers + libtorch*.so) is unpacked; its nvidia-* runtime wheels are not
#    needed to link, so the link allows undefined symbols in shared libraries
#    (-Wl,--allow-shlib-undefined): the CUDA runtime is resolved on the GPU machine.
# 2. tch 0.26 is generated against torch 2.13; its C++ wrapper calls ~15 ops that older libtorch
#    lacks (`_philox_*`, `_upsample_lanczos2d_aa*`, ...). A vendored copy of torch-sys gets those
#    wrappers' bodies replaced by an error ("not available in this libtorch"), and the build uses it
#    through a `[patch.crates-io]` given on the cargo command line, in a copy of the sources, so the
#    workspace's own build and Cargo.lock never see it.
# 3. A separate target folder, LIBTORCH pointing at the wheel's torch/ folder and the version check
#    bypassed; then the binary is stripped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${TORCH_VERSION:-2.11.0}"
work="${GPU_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cggm-gpu}/torch-$version"
output="${1:-$root/target/gpu/cggm-trainer}"
python="${PYTHON:-python3}"
mkdir -p "$work"

# 1. libtorch of the target version.
libtorch="$work/site/torch"
if [ ! -f "$libtorch/lib/libtorch.so" ]; then
  echo "== downloading the torch $version wheel (once)" >&2
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 -d "$work/wheels" "torch==$version"
  wheel="$(ls "$work"/wheels/torch-"$version"-*.whl | head -n1)"
  rm -rf "$work/site" && mkdir -p "$work/site"
  (cd "$work/site" && unzip -q "$wheel" 'torch/lib/*' 'torch/include/*' 'torch/version.py')
fi

# 2. torch-sys, vendored with the wrappers of missing ops stubbed out.
tsys_version="$(awk '/^name = "torch-sys"/{getline; gsub(/[^0-9.]/, ""); print; exit}' "$root/Cargo.lock")"
registry_copy="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-"$tsys_version" | head -n1)"
[ -d "$registry_copy" ] || { echo "torch-sys $tsys_version is not in the cargo registry: run 'cargo fetch' in $root first" >&2; exit 1; }
vendored="$work/torch-sys"
# Vendored once per torch-sys version (a fresh copy would rebuild its C++ wrapper every time).
if [ ! -f "$vendored/.cggm-stubbed-$tsys_version" ]; then
rm -rf "$vendored" && cp -r "$registry_copy" "$vendored"
"$python" - "$libtorch/include/ATen/ops" "$vendored/libtch/torch_api_generated.cpp" <<'PY'
import glob, re, sys
ops_dir, cpp = sys.argv[1], sys.argv[2]
declared = set()
for header in glob.glob(ops_dir + "/*.h"):
    declared.update(re.findall(r"\b(\w+)\s*\(", open(header).read()))
# Present in older headers under a different signature.
always = {"_scaled_dot_product_attention_math_for_mps"}
text = open(cpp).read()
stubbed = []
def stub(match):
    head, body = match.group(1), match.group(2)
    called = set(re.findall(r"torch::(\w+)\(", body)) - {"IntArrayRef"}
    missing = sorted(n for n in called if n not in declared or n in always)
    if not missing:
        return match.group(0)
    stubbed.append(missing[0])
    msg = f"{missing[0]} is not available in this libtorch (tch expects a newer one)"
    return f'{head}  PROTECT(\n    throw std::runtime_error("{msg}");\n  )\n}}\n'
text = re.sub(r"^(void atg_\w+\([^\n]*\) \{\n)(.*?)^\}\n", stub, text, flags=re.M | re.S)
open(cpp, "w").write(text)
print(f"stubbed {len(stubbed)} wrappers: {', '.join(sorted(set(stubbed)))}", file=sys.stderr)
PY
touch "$vendored/.cggm-stubbed-$tsys_version"
fi

# 3. Build from a copy of the sources (the patch rewrites Cargo.lock there, not here).
src="$work/src"
mkdir -p "$src"
tar -C "$root" --exclude=./target --exclude=./.git --exclude=./data --exclude=./node_modules \
  --exclude=./web/node_modules -cf - . | tar -C "$src" -xf -
echo "== building cggm against torch $version (separate target folder $work/target)" >&2
(
  cd "$src"
  env -u LIBTORCH_USE_PYTORCH -u VIRTUAL_ENV \
    LIBTORCH="$libtorch" LIBTORCH_BYPASS_VERSION_CHECK=1 \
    RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" \
    CARGO_TARGET_DIR="$work/target" \
    cargo build --release -p cggm-trainer --bin cggm-trainer \
    --config "patch.crates-io.torch-sys.path=\"$vendored\""
)
mkdir -p "$(dirname "$output")"
strip -o "$output" "$work/target/release/cggm-trainer"
echo "== $output ($(du -h "$output" | cut -f1)), linked against torch $version:" >&2
echo "   on the GPU machine: LD_LIBRARY_PATH=\$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib $output --help" >&2
