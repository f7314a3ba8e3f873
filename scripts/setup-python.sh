#!/usr/bin/env bash
# Installs the PyPI torch wheel that tch expects (its libtorch is what we link against) plus nibabel,
# the independent NIfTI reader our tests use as an oracle, into a virtual environment in a cache
# folder outside the checkout. Idempotent: a second run (or another clone) costs well under a second.
set -euo pipefail
TORCH_VERSION="${CGGM_TORCH_VERSION:-2.13.0}"
CACHE_ROOT="${CGGM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cggm-studio}"
VENV="$CACHE_ROOT/venv-torch-$TORCH_VERSION"
STAMP="$VENV/.cggm-ready"
REQS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/python-requirements.txt"
REQS_HASH="$(sha256sum "$REQS" | cut -c1-16)"
REQS_STAMP="$VENV/.cggm-requirements-$REQS_HASH"
# The extra packages follow scripts/python-requirements.txt: a changed file installs once more.
install_requirements() {
  [ -f "$REQS_STAMP" ] && return 0
  # Parallel builds may call this at once: one installs, the others wait for it. The torch pin is a
  # constraint so that no package can swap the libtorch we link against.
  (
    flock 9
    if [ ! -f "$REQS_STAMP" ]; then
      "$VENV/bin/python" -m pip install --quiet -r "$REQS" "torch==$TORCH_VERSION" >&2
      rm -f "$VENV"/.cggm-requirements-*
      touch "$REQS_STAMP"
    fi
  ) 9>"$VENV.lock"
}
# The MONAI Label client (3D Slicer's and OHIF's way to talk to a segmentation server), which the
# MONAI Label API's test drives: only its client module is used, so the package comes without its
# dependencies (MONAI, the server's stack), plus what that module imports (requests; cgi, which
# Python 3.13 dropped, from legacy-cgi there). Its own stamp: a new pin installs once.
MONAILABEL_VERSION="0.8.5"
MONAILABEL_STAMP="$VENV/.cggm-monailabel-$MONAILABEL_VERSION"
install_monailabel_client() {
  [ -f "$MONAILABEL_STAMP" ] && return 0
  (
    flock 9
    if [ ! -f "$MONAILABEL_STAMP" ]; then
      "$VENV/bin/python" -m pip install --quiet requests 'legacy-cgi; python_version >= "3.13"' \
        "torch==$TORCH_VERSION" >&2
      "$VENV/bin/python" -m pip install --quiet --no-deps "monailabel==$MONAILABEL_VERSION" >&2
      "$VENV/bin/python" -c 'from monailabel.client import MONAILabelClient' >&2
      rm -f "$VENV"/.cggm-monailabel-*
      touch "$MONAILABEL_STAMP"
    fi
  ) 9>"$VENV.lock"
}
if [ -f "$STAMP" ]; then
  install_requirements
  install_monailabel_client
  echo "$VENV"
  exit 0
fi
mkdir -p "$CACHE_ROOT"
PY="${PYTHON:-python3}"
# Build in a temporary folder and move it into place, so an interrupted install is never mistaken
# for a finished one.
TMP="$VENV.partial.$$"
rm -rf "$TMP"
"$PY" -m venv "$TMP" >&2
"$TMP/bin/python" -m pip install --quiet --upgrade pip >&2
"$TMP/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" nibabel numpy >&2
rm -rf "$VENV"
mv "$TMP" "$VENV"
# A venv records its absolute path in scripts; the interpreter itself works after a move, and we
# only ever call "$VENV/bin/python", so that is enough.
touch "$STAMP"
install_requirements
install_monailabel_client
echo "$VENV"
