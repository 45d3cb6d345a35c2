#!/usr/bin/env bash
# Point-to-point ceilings for mics' collectives on this host: fi_pingpong (libfabric-bin)
# bandwidth per provider and message size, and single-core memcpy bandwidth.
#
# fi_pingpong runs a server and a client, here both on this host: the client sends a message
# of S bytes, the server sends it back, I times. Its MB/sec column is bytes moved / elapsed
# time / 1e6 over both directions; since only one message is in flight at a time this is the
# one-way bandwidth of the provider for that size, the ceiling of one ring step. It has no
# warm-up and times from the first message, so each size runs enough iterations to move
# --volume bytes, and each measurement is repeated (--repeat) because the machine may be
# shared: the best run is the ceiling, the median shows the spread. The JSON also records,
# per run, how long runnable tasks waited for a CPU (/proc/pressure/cpu): large values mean
# other load competed with that run.
#
# Working invocations for libfabric 1.17 (the address is only for fi_pingpong's own TCP
# control connection; the data goes over the provider):
#   server: fi_pingpong -p shm -e rdm -S 1048576 -I 1000 -B 47592
#   client: fi_pingpong -p shm -e rdm -S 1048576 -I 1000 -P 47592 127.0.0.1
#   tcp:    the same with -p "tcp;ofi_rxm" (the RDM layering mics uses) or -p tcp
# -S takes a byte count up to 2^31-1 (an int); the default sweep (-S all) stops at 4 MiB.
#
# usage: pingpong_ceiling.sh [options]
#   --providers LIST  comma-separated providers (default "shm,tcp;ofi_rxm")
#   --sizes LIST      sizes with K/M/G suffixes (default "1M 16M 64M 256M")
#   --addr ADDR       server address for the control connection (default 127.0.0.1)
#   --repeat N        runs per provider and size (default 5)
#   --volume BYTES    bytes each run moves one way, sets the iterations (default 512M)
#   --port N          first control port (default 47700; each run takes the next)
#   --memcpy PATH     memcpy_bw binary (default build/peers/memcpy_bw; "none" skips it)
#   --json FILE       also write the results as JSON
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
providers="shm,tcp;ofi_rxm"
sizes="1M 16M 64M 256M"
addr=127.0.0.1
repeat=5
volume=512M
port=47700
memcpy_bin="$root/build/peers/memcpy_bw"
json=""

while [ $# -gt 0 ]; do
  case "$1" in
    --providers) providers=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --addr) addr=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --volume) volume=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --memcpy) memcpy_bin=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "pingpong_ceiling.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v fi_pingpong >/dev/null || { echo "fi_pingpong not found: install libfabric-bin" >&2; exit 1; }

to_bytes() {  # 64M -> 67108864
  local v=${1%B}; v=${v%i}
  case "$v" in
    *[kK]) echo $(( ${v%?} * 1024 )) ;;
    *[mM]) echo $(( ${v%?} * 1024 * 1024 )) ;;
    *[gG]) echo $(( ${v%?} * 1024 * 1024 * 1024 )) ;;
    *) echo $(( v )) ;;
  esac
}

volume_bytes=$(to_bytes "$volume")
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Microseconds that runnable tasks have waited for a CPU since boot (PSI), or 0 without PSI:
# its growth during a run says how much other load competed with the benchmark.
cpu_stall_us() { awk '/^some/ { split($5, a, "="); print a[2]; f = 1 } END { if (!f) print 0 }' \
  /proc/pressure/cpu 2>/dev/null || echo 0; }

# One fi_pingpong run; prints "MB/sec usec/xfer stall_ms" of the client, nothing on failure.
run_once() {
  local prov=$1 size=$2 iters=$3
  local stall0
  stall0=$(cpu_stall_us)
  local limit=$(( 60 + iters * size / 50000000 ))  # generous: 50 MB/s worst case
  port=$((port + 1))
  timeout "$limit" fi_pingpong -p "$prov" -e rdm -S "$size" -I "$iters" -B "$port" \
    >"$tmp/server.txt" 2>&1 &
  server_pid=$!
  local out="" try
  for try in $(seq 1 50); do
    out=$(timeout "$limit" fi_pingpong -p "$prov" -e rdm -S "$size" -I "$iters" -P "$port" \
      "$addr" 2>&1)
    if ! grep -q "failed to connect\|Connection refused" <<<"$out"; then break; fi
    sleep 0.1
  done
  wait "$server_pid" 2>/dev/null
  server_pid=""
  local stall_ms=$(( ($(cpu_stall_us) - stall0) / 1000 ))
  # bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec
  awk -v st="$stall_ms" 'NF == 8 && $6 ~ /^[0-9.]+$/ { print $6, $7, st }' <<<"$out" | tail -1
  if ! awk 'NF == 8 && $6 ~ /^[0-9.]+$/ { ok = 1 } END { exit !ok }' <<<"$out"; then
    echo "fi_pingpong -p '$prov' -S $size failed: $(tail -2 <<<"$out" | tr '\n' ' ')" >&2
  fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

json_rows=()
printf '# fi_pingpong one-way bandwidth (libfabric %s), %s run(s) each, server and client on %s\n' \
  "$(fi_info --version 2>/dev/null | awk '/^libfabric:/ { print $2 }')" "$repeat" "$addr"
printf '# %-14s %12s %7s %10s %10s %12s\n' provider "size(B)" iters "best GB/s" "median" "best us/msg"
IFS=',' read -r -a prov_list <<<"$providers"
for prov in "${prov_list[@]}"; do
  for s in $sizes; do
    size=$(to_bytes "$s")
    iters=$(( volume_bytes / size ))
    [ "$iters" -lt 4 ] && iters=4
    [ "$iters" -gt 100000 ] && iters=100000
    : >"$tmp/runs.txt"
    for r in $(seq 1 "$repeat"); do
      run_once "$prov" "$size" "$iters" >>"$tmp/runs.txt"
    done
    if [ ! -s "$tmp/runs.txt" ]; then
      printf '  %-14s %12s %7s %10s %10s %12s\n' "$prov" "$size" "$iters" failed - -
      json_rows+=("{\"provider\": \"$prov\", \"size\": $size, \"iters\": $iters, \"ok\": false}")
      continue
    fi
    best=$(awk '{ print $1 }' "$tmp/runs.txt" | sort -g | tail -1)
    med=$(awk '{ print $1 }' "$tmp/runs.txt" | median)
    best_us=$(awk '{ print $2 }' "$tmp/runs.txt" | sort -g | head -1)
    runs=$(awk '{ printf "%s%.4f", (NR > 1 ? ", " : ""), $1 / 1000 }' "$tmp/runs.txt")
    stalls=$(awk '{ printf "%s%d", (NR > 1 ? ", " : ""), $3 }' "$tmp/runs.txt")
    printf '  %-14s %12s %7s %10.3f %10.3f %12.1f\n' "$prov" "$size" "$iters" \
      "$(awk -v v="$best" 'BEGIN { print v / 1000 }')" "$(awk -v v="$med" 'BEGIN { print v / 1000 }')" "$best_us"
    json_rows+=("{\"provider\": \"$prov\", \"size\": $size, \"iters\": $iters, \"ok\": true, \"best_gbps\": $(awk -v v="$best" 'BEGIN { printf "%.4f", v / 1000 }'), \"median_gbps\": $(awk -v v="$med" 'BEGIN { printf "%.4f", v / 1000 }'), \"best_us_per_msg\": $best_us, \"runs_gbps\": [$runs], \"runs_cpu_stall_ms\": [$stalls]}")
  done
done

memcpy_json="null"
if [ "$memcpy_bin" != none ]; then
  if [ -x "$memcpy_bin" ]; then
    min=""; max=""
    for s in $sizes; do
      b=$(to_bytes "$s")
      if [ -z "$min" ] || [ "$b" -lt "$min" ]; then min=$b; fi
      if [ -z "$max" ] || [ "$b" -gt "$max" ]; then max=$b; fi
    done
    echo "#"
    "$memcpy_bin" -b "$min" -e "$max" -f 4 -j "$tmp/memcpy.json" || echo "memcpy_bw failed" >&2
    [ -s "$tmp/memcpy.json" ] && memcpy_json=$(cat "$tmp/memcpy.json")
  else
    echo "# memcpy: $memcpy_bin not built (bench/peers/build.sh)" >&2
  fi
fi

if [ -n "$json" ]; then
  {
    printf '{"tool": "pingpong_ceiling", "addr": "%s", "repeat": %s, "volume_bytes": %s,\n' \
      "$addr" "$repeat" "$volume_bytes"
    printf ' "pingpong": [\n'
    for i in "${!json_rows[@]}"; do
      printf '  %s%s\n' "${json_rows[$i]}" "$([ "$i" -lt $(( ${#json_rows[@]} - 1 )) ] && echo ,)"
    done
    printf ' ],\n "memcpy": %s}\n' "$memcpy_json"
  } >"$json"
  echo "# results written to $json"
fi
