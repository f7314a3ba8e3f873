#!/usr/bin/env bash
# Installs MLflow (its tracking server and client) and TensorBoard (its event-file reader) from
# PyPI into their own virtual environment, for the tracking test (trainer/tests/tracking.rs): a
# separate venv, so that MLflow's many dependencies never touch the torch venv of setup-python.sh.
# Prints the venv. Idempotent: a second run costs well under a second.
set -euo pipefail
MLFLOW_VERSION="${CGGM_MLFLOW_VERSION:-3.17.2}"
CACHE_ROOT="${CGGM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cggm-studio}"
VENV="$CACHE_ROOT/venv-tracking"
STAMP="$VENV/.cggm-ready-mlflow-$MLFLOW_VERSION"
if [ -f "$STAMP" ]; then
  echo "$VENV"
  exit 0
fi
mkdir -p "$CACHE_ROOT"
(
  # Parallel callers: one installs, the others wait for it.
  flock 9
  if [ ! -f "$STAMP" ]; then
    [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet "mlflow==$MLFLOW_VERSION" tensorboard >&2
    "$VENV/bin/python" -c 'import mlflow, tensorboard.backend.event_processing.event_accumulator' >&2
    rm -f "$VENV"/.cggm-ready-*
    touch "$STAMP"
  fi
) 9>"$VENV.lock"
echo "$VENV"
