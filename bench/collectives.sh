#!/usr/bin/env bash
# Side-by-side collective benchmark on this host, the source of docs/PERFORMANCE.md:
# libfabric pingpong ceilings, Open MPI (Debian's openmpi-bin) and mics on the same ranks and
# sizes, in one run, then a summary table with ratios (summary.md).
#
# usage: bench/collectives.sh [OUT_DIR]      (default out/collectives; needs make build)
# Takes about 5 minutes per round (ROUNDS, default 3) on 2 cores. Measure on a quiet machine: other load shows up as
# noise (the pingpong JSON records CPU stall per run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/out/collectives}
mics=$root/build/mics
mkdir -p "$out"
"$root/bench/peers/build.sh" >/dev/null
ompi=$root/build/peers/ompi_collectives
mpirun_cmd=(mpirun --oversubscribe --allow-run-as-root --bind-to none)
sweep=(-b 1M -e 256M -f 4 -w 2 -n 5 -r 3)
lat=(-b 8 -e 8 -w 100 -n 1000 -r 5)

echo "== ceilings: fi_pingpong shm and tcp;ofi_rxm, memcpy"
"$root/bench/peers/pingpong_ceiling.sh" --providers "shm,tcp;ofi_rxm" --sizes "1M 16M 64M 256M" \
  --repeat 3 --json "$out/ceilings.json" | tail -n 12

# ROUNDS rounds, each running every peer and layout once, interleaved: on a shared VM a slow
# minute then hits one round of everything rather than one system; the summary keeps each
# system's best round (as -r keeps the best block inside a run).
srsweep=(-b 256K -e 256M -f 2 -w 2 -n 5 -r 3)  # sendrecv at every S/n the tables need
for round in $(seq 1 "${ROUNDS:-3}"); do
  for n in 2 4; do
    echo "== round $round: $n ranks, one node (shm): Open MPI, then mics"
    "${mpirun_cmd[@]}" -n $n "$ompi" "${sweep[@]}" -o all_gather,reduce_scatter_v,all_reduce -j "$out/ompi_n${n}_r$round.json" >/dev/null
    "${mpirun_cmd[@]}" -n $n -x GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296 \
      "$ompi" "${sweep[@]}" -o all_gather,reduce_scatter_v,all_reduce -j "$out/ompi_warm_n${n}_r$round.json" >/dev/null
    "$mics" launch -n $n --no-prefix -- "$mics" bench --op all_gather,reduce_scatter,all_reduce \
      "${sweep[@]}" --json "$out/mics_n${n}_r$round.json" >/dev/null
    "$mics" launch -n $n --no-prefix -- "$mics" bench --op sendrecv "${srsweep[@]}" --json "$out/mics_sr_n${n}_r$round.json" >/dev/null
    "${mpirun_cmd[@]}" -n $n "$ompi" "${lat[@]}" -o all_reduce -j "$out/ompi_lat_n${n}_r$round.json" >/dev/null
    "$mics" launch -n $n --no-prefix -- "$mics" bench --op all_reduce "${lat[@]}" --json "$out/mics_lat_n${n}_r$round.json" >/dev/null
  done

  echo "== round $round: 2 emulated nodes x 2 ranks (tcp between nodes): flat ring and hierarchical all-gather"
  for algo in ring hier; do
    "$mics" launch -n 4 --nodes 2 --no-prefix -- "$mics" bench --op all_gather "${sweep[@]}" \
      --algo $algo --json "$out/mics_2x2_${algo}_r$round.json" >/dev/null
  done
  "$mics" launch -n 4 --nodes 2 --no-prefix -- "$mics" bench --op sendrecv "${srsweep[@]}" \
    --json "$out/mics_sr_2x2_r$round.json" >/dev/null
  echo "== round $round: 2 emulated nodes x 1 rank (tcp only)"
  "$mics" launch -n 2 --nodes 2 --no-prefix -- "$mics" bench --op sendrecv "${srsweep[@]}" \
    --json "$out/mics_sr_1x2_r$round.json" >/dev/null
  "$mics" launch -n 2 --nodes 2 --no-prefix -- "$mics" bench --op all_gather "${sweep[@]}" \
    --json "$out/mics_1x2_ring_r$round.json" >/dev/null
done

python3 "$root/bench/summarize.py" "$out" | tee "$out/summary.md"
