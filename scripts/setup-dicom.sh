#!/usr/bin/env bash
# DICOM import converts each series with Debian's dcm2niix (Chris Rorden's converter); install it
# when missing.
set -euo pipefail
if command -v dcm2niix >/dev/null; then exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dcm2niix >/dev/null
