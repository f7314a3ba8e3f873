#!/usr/bin/env bash
# Installs the front-end packages (uPlot) from the npm registry into web/node_modules, once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../web"
if [ -f package.json ] && [ ! -f node_modules/.cggm-ready ]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.cggm-ready
fi
