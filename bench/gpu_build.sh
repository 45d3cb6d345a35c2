#!/usr/bin/env bash
# Configure and build mics with CUDA (sm_90, Release, Ninja) on a GPU machine, for bench/gpu.sh,
# bench/gpu_rounds.sh and one-off device runs. Reuses BUILD_DIR when it is already configured.
#
#   bench/gpu_build.sh BUILD_DIR [TARGET ...]      (default target: mics)
# Environment: MICS_FABRIC_PREFIX (an unpacked libfabric-dev), or FABRIC_DEB (a libfabric-dev .deb,
# unpacked into MICS_FABRIC_PREFIX, default /tmp/fab: machines that have libfabric's runtime but
# not its headers); JOBS (ninja's parallelism, default: the cores). Output: BUILD_DIR/build.log.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:?usage: $0 BUILD_DIR [TARGET ...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(mics)
mkdir -p "$BUILD"
if [ -n "${FABRIC_DEB:-}" ]; then
  [ -f "$FABRIC_DEB" ] || { echo "gpu_build.sh: FABRIC_DEB=$FABRIC_DEB not found" >&2; exit 2; }
  MICS_FABRIC_PREFIX=${MICS_FABRIC_PREFIX:-/tmp/fab}
  dpkg -x "$FABRIC_DEB" "$MICS_FABRIC_PREFIX" || exit 1
  # the .deb's libfabric.so points at a libfabric.so.1 that only the runtime package holds
  lib=$MICS_FABRIC_PREFIX/usr/lib/x86_64-linux-gnu
  if [ ! -e "$lib/libfabric.so" ] && [ -e /usr/lib/x86_64-linux-gnu/libfabric.so.1 ]; then
    ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 "$lib/libfabric.so"
  fi
fi
{
  [ -f "$BUILD/build.ninja" ] ||
    cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
      ${MICS_FABRIC_PREFIX:+-DMICS_FABRIC_PREFIX=$MICS_FABRIC_PREFIX}
} > "$BUILD/build.log" 2>&1 && ninja -C "$BUILD" -j"${JOBS:-$(nproc)}" "${TARGETS[@]}" >> "$BUILD/build.log" 2>&1
status=$?
if [ $status -ne 0 ]; then
  grep -E "error|FAILED|CMake Error" "$BUILD/build.log" | head -40 >&2
  echo "gpu_build.sh: the build failed (see $BUILD/build.log)" >&2
  exit 1
fi
echo "gpu_build.sh: built ${TARGETS[*]} in $BUILD"
