#!/usr/bin/env bash
# The DICOM SEG test checks the objects the server writes with dciodvfy, David Clunie's validator of
# DICOM objects against their IOD (Debian's dicom3tools); install it when missing.
set -euo pipefail
if command -v dciodvfy >/dev/null; then exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dicom3tools >/dev/null
