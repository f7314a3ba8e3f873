#!/usr/bin/env bash
# Installs the front-end packages (uPlot, NiiVue) from the npm registry into web/node_modules;
# again whenever package-lock.json changes (the marker holds the lock file's hash).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../web"
[ -f package.json ] || exit 0
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.cggm-ready 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.cggm-ready
fi
