#!/usr/bin/env bash
# Builds the peer benchmarks into build/peers/ (or $1): the Open MPI collectives benchmark
# (needs mpicc from libopenmpi-dev) and the single-core memcpy benchmark.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/build/peers}
mkdir -p "$out"
cflags=(-O2 -std=gnu11 -Wall -Wextra -Wpedantic -Wshadow)
if command -v mpicc >/dev/null; then
  mpicc "${cflags[@]}" -o "$out/ompi_collectives" "$here/ompi_collectives.c"
  echo "built $out/ompi_collectives"
else
  echo "mpicc not found: install openmpi-bin and libopenmpi-dev (skipping ompi_collectives)" >&2
fi
${CC:-cc} "${cflags[@]}" -o "$out/memcpy_bw" "$here/memcpy_bw.c"
echo "built $out/memcpy_bw"
${CC:-cc} "${cflags[@]}" -O3 -I/usr/include/x86_64-linux-gnu/openblas-pthread -o "$out/sgemm_rate" "$here/sgemm_rate.c" -lopenblas
echo "built $out/sgemm_rate"
