#!/usr/bin/env bash
# Runs a command with the project's libtorch environment: installs the pinned torch wheel on first
# use (scripts/setup-python.sh), then puts that venv's python first on PATH so that torch-sys links
# against its libtorch. Usage: scripts/with-torch.sh cargo build --release
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$("$here/setup-python.sh")"
export PATH="$venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
# The independent NIfTI reader (nibabel) that tests use as an oracle lives in the same venv.
export CGGM_PYTHON="$venv/bin/python"
exec "$@"
