#!/usr/bin/env bash
# Installs the Debian packages mics builds and tests with. Idempotent: packages already
# present are not reinstalled, and apt is not touched at all when nothing is missing.
set -euo pipefail
PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libfabric-dev libfabric-bin          # the fabric, fi_info / fi_pingpong
  libgtest-dev libgmock-dev            # tests
  libcli11-dev libfmt-dev nlohmann-json3-dev
  openmpi-bin libopenmpi-dev           # mpirun launch test and the CPU collective peer
  libopenblas-dev                      # CPU GEMMs
  python3                              # bench summaries and the export check
  chromium                             # the report's rendering test (headless)
  procps psmisc
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
