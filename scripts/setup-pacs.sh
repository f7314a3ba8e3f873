#!/usr/bin/env bash
# The PACS test (cli/tests/pacs.rs) talks DICOMweb to a real Orthanc: Debian's `orthanc` and its
# DICOMweb plugin `orthanc-dicomweb`; install them when missing. The system service stays stopped
# and disabled: each test starts its own Orthanc on loopback with a temporary configuration.
# Idempotent; returns at once when both are installed.
set -euo pipefail
ORTHANC=/usr/sbin/Orthanc
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if [ -x "$ORTHANC" ] && [ -f "$PLUGIN" ]; then exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
# Keep the package's post-install from starting the service (Debian's policy-rc.d convention),
# unless the machine has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  orthanc orthanc-dicomweb >/dev/null
# Stopped and disabled, whichever init system the machine has.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
elif [ -x /etc/init.d/orthanc ]; then
  $SUDO /etc/init.d/orthanc stop >/dev/null 2>&1 || true
  $SUDO update-rc.d orthanc disable >/dev/null 2>&1 || true
fi
for path in "$ORTHANC" "$PLUGIN"; do
  if [ ! -e "$path" ]; then
    echo "setup-pacs.sh: $path is missing after installing orthanc and orthanc-dicomweb" >&2
    exit 1
  fi
done
