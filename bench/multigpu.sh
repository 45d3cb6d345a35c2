#!/usr/bin/env bash
# Issue 10 in one command, on one host with 8 NVIDIA GPUs: every training row (mics p=4, p=8,
# zero3, ddp; PyTorch FSDP FULL_SHARD and HYBRID_SHARD 4x2; S=1 and S=4; 8 GPUs as 2 emulated
# nodes of 4 and as 1 node of 8), the scaling series (1, 2, 4, 8 GPUs), the collective
# benchmarks, then OUT/summary.md (bench/multigpu_summary.py) with the ratios the issue asks for.
#
#   bench/multigpu.sh BUILD_DIR OUT_DIR [options]
#     --max-gpus N|auto  run only the rows that need at most N GPUs (auto: as many as this host
#                        has); without it every row runs, and a host with fewer than 8 GPUs is an error
#     --models LIST      comma list of 1.3b, 6.7b (default: both)
#     --only REGEX       only the rows whose name matches (bash regex), e.g. '^1.3b_2x4_' or 'S4$'
#     --steps N          optimizer steps per training row (default 15; the first 3 are not timed)
#     --with-fabric      also mics p=8 on 2x4 with MICS_GPU_COMM=fabric (the two-stage
#                        hierarchical all-gather; the NCCL backend runs one ncclAllGather instead)
#     --force            run rows again that already have a result (default: skip them, so a
#                        run cut short, e.g. by a 10-minute command limit, resumes where it stopped)
#     --list             print the rows (name, GPUs) and exit
#     --dry-run          print every command instead of running it (needs no GPU)
# Environment: SEQ (2048: tokens per sequence and the models' context), MB_1P3B (4) and MB_6P7B
# (2): sequences per GPU and micro-step, PEAK_FLOPS (989e12, for MFU), ROW_TIMEOUT (1200 s per
# row), PYTHON (python3, with torch >= 2.4 for FSDP2, else FSDP1), TORCHRUN (torchrun),
# NCCL_TESTS_DIR (a build of nccl-tests: its all_gather/reduce_scatter/all_reduce_perf also run
# on the 8 GPUs of one node), NCCL_LOG (1: NCCL_DEBUG=INFO into each 2x4 row's folder, to check
# that inter-node traffic went "via NET").
#
# Layouts: "1xN" is one node of N ranks; "2x4" is 8 ranks as 2 emulated nodes of 4: mics ranks
# through `mics launch -n 8 --nodes 2 -- bench/emulated_node.sh` (each node its own
# NCCL_HOSTID and its own 4 GPUs), FSDP ranks through torchrun with --nodes 2 (the peer sets
# NCCL_HOSTID per node). Every process has NCCL_NVLS_ENABLE=0.
#
# Per row OUT/rows/NAME/: row.json (what it is), cmd.txt, log.txt, status (exit code),
# metrics.jsonl (mics) or result.json (FSDP, benchmarks), gpu_mem.csv (nvidia-smi memory.used
# sampled every 250 ms during the row, MiB, index,value), gpu_mem_before.csv.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "multigpu.sh: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: bench/multigpu.sh BUILD_DIR OUT_DIR [--max-gpus N|auto] [--models 1.3b,6.7b] [--only REGEX] [--steps N] [--with-fabric] [--force] [--list] [--dry-run]"
BUILD=$1 OUT=$2
shift 2
MAX_GPUS="" MODELS="1.3b,6.7b" ONLY="" STEPS=15 FABRIC=0 FORCE=0 LIST=0 DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --max-gpus) [ $# -ge 2 ] || die "--max-gpus needs N or auto"; MAX_GPUS=$2; shift 2 ;;
    --models) [ $# -ge 2 ] || die "--models needs a list"; MODELS=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a regex"; ONLY=$2; shift 2 ;;
    --steps) [ $# -ge 2 ] || die "--steps needs N"; STEPS=$2; shift 2 ;;
    --with-fabric) FABRIC=1; shift ;;
    --force) FORCE=1; shift ;;
    --list) LIST=1; shift ;;
    --dry-run) DRY=1; shift ;;
    *) die "unknown option '$1' (see the header of bench/multigpu.sh)" ;;
  esac
done
if ! [[ $STEPS =~ ^[0-9]+$ ]] || ((STEPS < 5)); then
  die "--steps '$STEPS' must be a number >= 5 (3 untimed warm-up steps + 2)"
fi
[[ -z $MAX_GPUS || $MAX_GPUS == auto || $MAX_GPUS =~ ^[1-9][0-9]*$ ]] || die "--max-gpus '$MAX_GPUS' is not a number or auto"
SEQ=${SEQ:-2048} MB_1P3B=${MB_1P3B:-4} MB_6P7B=${MB_6P7B:-2} PEAK_FLOPS=${PEAK_FLOPS:-989e12}
ROW_TIMEOUT=${ROW_TIMEOUT:-1200} PYTHON=${PYTHON:-python3} TORCHRUN=${TORCHRUN:-torchrun} NCCL_LOG=${NCCL_LOG:-1}
for v in SEQ MB_1P3B MB_6P7B ROW_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v='${!v}' is not a positive number"
done
[[ $PEAK_FLOPS =~ ^[0-9]+(\.[0-9]+)?([eE][0-9]+)?$ ]] || die "PEAK_FLOPS='$PEAK_FLOPS' is not a number like 989e12"
MICS=$BUILD/mics
export NCCL_NVLS_ENABLE=0
export MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-900}  # NCCL set-up and a 6.7B initialisation take a while

# ---- the rows: name gpus layout system strategy p S model-tag model-spec micro-batch
ROWS=()
model_spec() {
  case $1 in
    1.3b) echo "L24H16C2048V50304T$SEQ $MB_1P3B" ;;  # GPT-3 XL shape: 1.32B parameters
    6.7b) echo "L32H32C4096V50304T$SEQ $MB_6P7B" ;;  # GPT-3 6.7B shape: 6.66B parameters
    *) die "--models: unknown model '$1' (1.3b or 6.7b)" ;;
  esac
}
add() { ROWS+=("$*"); }
IFS=, read -r -a model_list <<<"$MODELS"
for tag in "${model_list[@]}"; do
  read -r spec mb <<<"$(model_spec "$tag")"
  [ -n "$spec" ] || exit 2
  for S in 1 4; do
    for layout in 1x8 2x4; do
      add "${tag}_${layout}_mics-p4_S$S" 8 "$layout" mics mics 4 "$S" "$tag" "$spec" "$mb"
      # p=8 spans both nodes of 2x4; on 1x8 it is the zero3 row's configuration, so it runs on 2x4
      # only (there mics p=8 and zero3 are the same partition too: a check that they agree)
      [ "$layout" = 2x4 ] && add "${tag}_${layout}_mics-p8_S$S" 8 "$layout" mics mics 8 "$S" "$tag" "$spec" "$mb"
      add "${tag}_${layout}_zero3_S$S" 8 "$layout" mics zero3 8 "$S" "$tag" "$spec" "$mb"
      add "${tag}_${layout}_ddp_S$S" 8 "$layout" mics ddp 1 "$S" "$tag" "$spec" "$mb"
      add "${tag}_${layout}_fsdp-full_S$S" 8 "$layout" fsdp full 8 "$S" "$tag" "$spec" "$mb"
      add "${tag}_${layout}_fsdp-hybrid_S$S" 8 "$layout" fsdp hybrid 4 "$S" "$tag" "$spec" "$mb"
      add "${tag}_${layout}_mics-p4-bf16g_S$S" 8 "$layout" mics-bf16g mics 4 "$S" "$tag" "$spec" "$mb"
      if [ "$FABRIC" = 1 ] && [ "$layout" = 2x4 ]; then
        add "${tag}_${layout}_mics-p8-fabric_S$S" 8 "$layout" mics-fabric mics 8 "$S" "$tag" "$spec" "$mb"
      fi
    done
    # a host of two GPUs (issue 10's comparison at its smallest): 2 emulated nodes of 1 GPU, where
    # MiCS p=1 keeps each partition on its node and ZeRO-3 / FSDP FULL_SHARD shard across both;
    # and 1 node of 2 at S=4 (its S=1 rows are the scaling series' below)
    add "${tag}_2x1_mics-p1_S$S" 2 2x1 mics mics 1 "$S" "$tag" "$spec" "$mb"
    add "${tag}_2x1_zero3_S$S" 2 2x1 mics zero3 2 "$S" "$tag" "$spec" "$mb"
    add "${tag}_2x1_fsdp-full_S$S" 2 2x1 fsdp full 2 "$S" "$tag" "$spec" "$mb"
    add "${tag}_2x1_fsdp-hybrid_S$S" 2 2x1 fsdp hybrid 1 "$S" "$tag" "$spec" "$mb"
    if [ "$S" != 1 ]; then
      add "${tag}_1x2_mics-p2_S$S" 2 1x2 mics mics 2 "$S" "$tag" "$spec" "$mb"
      add "${tag}_1x2_fsdp-full_S$S" 2 1x2 fsdp full 2 "$S" "$tag" "$spec" "$mb"
    fi
    # bf16 parameter gathers (--gather-dtype bf16: half the gather bytes, as FSDP's param_dtype)
    add "${tag}_1x2_mics-p2-bf16g_S$S" 2 1x2 mics-bf16g mics 2 "$S" "$tag" "$spec" "$mb"
    # one GPU: the scaling series' first point and the no-communication reference of every row
    add "${tag}_1x1_mics_S$S" 1 1x1 mics single 1 "$S" "$tag" "$spec" "$mb"
    add "${tag}_1x1_fsdp-full_S$S" 1 1x1 fsdp full 1 "$S" "$tag" "$spec" "$mb"
  done
  for g in 2 4; do  # scaling series (S=1); 8 GPUs: the 1x8 and 2x4 rows above
    add "${tag}_1x${g}_mics-p${g}_S1" "$g" "1x$g" mics mics "$g" 1 "$tag" "$spec" "$mb"
    add "${tag}_1x${g}_fsdp-full_S1" "$g" "1x$g" fsdp full "$g" 1 "$tag" "$spec" "$mb"
  done
done
for layout in 1x8 2x4; do
  add "bench_${layout}_mics-host" 8 "$layout" bench-mics auto - - - - -
  add "bench_${layout}_nccl" 8 "$layout" bench-nccl - - - - - -
done
add "bench_2x4_mics-host-ring" 8 2x4 bench-mics ring - - - - -  # all-gather, flat ring across the nodes
add "bench_2x4_mics-host-hier" 8 2x4 bench-mics hier - - - - -  # all-gather, two-stage hierarchical
add "bench_1x1_nccl" 1 1x1 bench-nccl - - - - - -  # a smoke test of the NCCL benchmark
[ -n "${NCCL_TESTS_DIR:-}" ] && add "bench_1x8_nccl-tests" 8 1x8 bench-nccl-tests - - - - - -

selected=()
for r in "${ROWS[@]}"; do
  name=${r%% *}
  if [ -z "$ONLY" ] || [[ $name =~ $ONLY ]]; then selected+=("$r"); fi
done
((${#selected[@]} > 0)) || die "--only '$ONLY' matches no row (see --list)"
if [ "$LIST" = 1 ]; then
  for r in "${selected[@]}"; do read -r name gpus _ <<<"$r"; printf '%-34s %s GPU(s)\n' "$name" "$gpus"; done
  exit 0
fi

# ---- GPUs: how many this host has, and which rows fit
count_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    local list=${CUDA_VISIBLE_DEVICES//[[:space:]]/}
    [ -z "$list" ] && { echo 0; return; }
    awk -F, '{print NF}' <<<"$list"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}
if [ "$DRY" = 1 ]; then
  HAVE=${MAX_GPUS:-8}
  [ "$HAVE" = auto ] && HAVE=8
else
  HAVE=$(count_gpus)
  ((HAVE > 0)) || die "no NVIDIA GPU found (nvidia-smi -L lists none, or CUDA_VISIBLE_DEVICES is empty)"
  [ -x "$MICS" ] || die "$MICS is not an executable mics (BUILD_DIR must hold a CUDA build: see bench/gpu.sh)"
fi
need=0
for r in "${selected[@]}"; do read -r _ g _ <<<"$r"; ((g > need)) && need=$g; done
if [ -z "$MAX_GPUS" ]; then
  ((HAVE >= need)) || die "these rows need $need GPUs and this host has $HAVE; pass --max-gpus auto (or N) to run the rows that fit"
  LIMIT=$need
elif [ "$MAX_GPUS" = auto ]; then
  LIMIT=$HAVE
else
  ((MAX_GPUS <= HAVE)) || die "--max-gpus $MAX_GPUS, but this host has $HAVE GPU(s)"
  LIMIT=$MAX_GPUS
fi

if [ "$DRY" != 1 ]; then
  mkdir -p "$OUT/rows" || die "cannot create $OUT/rows"
  OUT=$(cd "$OUT" && pwd)
fi
# every row of these options (not only --only's), so the summary can name the ones not run yet
[ "$DRY" = 1 ] || printf '%s\n' "${ROWS[@]}" | awk '{print $1"\t"$2}' >"$OUT/plan.tsv"
DATA=$OUT/data
run() {  # print (dry run) or run a command line
  if [ "$DRY" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
if [ "$DRY" != 1 ]; then
  {
    date -u
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    nvidia-smi topo -m 2>&1
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version())' 2>&1
    "$MICS" --version 2>&1
    echo "GPUs: $HAVE, rows run up to: $LIMIT; SEQ=$SEQ MB_1P3B=$MB_1P3B MB_6P7B=$MB_6P7B STEPS=$STEPS PEAK_FLOPS=$PEAK_FLOPS"
  } >"$OUT/env.txt"
  if [ ! -f "$DATA/rand_train.bin" ]; then
    mkdir -p "$DATA"
    "$PYTHON" "$SRC/bench/peers/make_llmc_data.py" "$DATA" 20000000 || die "making random-token shards in $DATA failed"
  fi
fi

mem_pid=""
start_mem() {
  [ "$DRY" = 1 ] && return
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits >"$1/gpu_mem_before.csv" 2>/dev/null
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 250 >"$1/gpu_mem.csv" 2>/dev/null &
  mem_pid=$!
}
stop_mem() {
  if [ -n "$mem_pid" ]; then kill "$mem_pid" 2>/dev/null; wait "$mem_pid" 2>/dev/null; fi
  mem_pid=""
}
trap 'stop_mem' EXIT

json_str() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; }

ran=0 skipped_gpus=0 skipped_done=0 failed=0
for r in "${selected[@]}"; do
  read -r name gpus layout system strategy p S tag spec mb <<<"$r"
  if ((gpus > LIMIT)); then
    echo "-- $name: skipped (needs $gpus GPUs, running up to $LIMIT)"
    skipped_gpus=$((skipped_gpus + 1))
    continue
  fi
  dir=$OUT/rows/$name
  if [ "$FORCE" != 1 ] && [ "$(cat "$dir/status" 2>/dev/null)" = 0 ]; then
    echo "-- $name: done before (--force runs it again)"
    skipped_done=$((skipped_done + 1))
    continue
  fi
  nodes=${layout%%x*}
  cmd=()
  envs=(NCCL_NVLS_ENABLE=0)
  if [ "$nodes" -gt 1 ] && [ "$NCCL_LOG" = 1 ]; then envs+=(NCCL_DEBUG=INFO "NCCL_DEBUG_FILE=$dir/nccl.%h.%p.log"); fi
  case $system in
    mics | mics-fabric | mics-bf16g)
      [ "$system" = mics-fabric ] && envs+=(MICS_GPU_COMM=fabric)
      targs=(train --device cuda --model "$spec" --grad-accum "$S" --micro-batch "$mb" --seq-len "$SEQ"
             --steps "$STEPS" --data "$DATA/rand_train.bin" --samples 0 --eval-batches 1 --lr 3e-4
             --weight-decay 0.1 --clip 1.0 --log-every 1 --metrics "$dir/metrics.jsonl")
      # ddp and zero3 fix the partition size (1, all ranks): mics train refuses --partition-size there
      [ "$system" = mics-bf16g ] && targs+=(--gather-dtype bf16)
      case $strategy in
        single) ;;
        mics) targs+=(--strategy mics --partition-size "$p") ;;
        *) targs+=(--strategy "$strategy") ;;
      esac
      if [ "$gpus" = 1 ]; then cmd=("$MICS" "${targs[@]}")
      elif [ "$nodes" -gt 1 ]; then cmd=("$MICS" launch -n "$gpus" --nodes "$nodes" -- "$SRC/bench/emulated_node.sh" "$MICS" "${targs[@]}")
      else cmd=("$MICS" launch -n "$gpus" -- "$MICS" "${targs[@]}")
      fi ;;
    fsdp)
      pargs=("$SRC/bench/peers/torch_fsdp.py" --model "$spec" --micro-batch "$mb" --seq-len "$SEQ" --grad-accum "$S"
             --steps "$STEPS" --warmup-steps 3 --sharding "$strategy" --nodes "$nodes" --lr 3e-4 --weight-decay 0.1
             --clip 1.0 --peak-flops "$PEAK_FLOPS" --json "$dir/result.json")
      [ "$strategy" = hybrid ] && pargs+=(--shard-size "$p")
      if [ "$gpus" = 1 ]; then cmd=("$PYTHON" "${pargs[@]}")
      else cmd=("$TORCHRUN" --standalone --nproc_per_node "$gpus" "${pargs[@]}")
      fi ;;
    bench-mics)
      # host buffers: `mics bench` has no GPU-buffer mode (src/tools/bench.cpp allocates host
      # vectors and runs the libfabric Communicator); its figures are the CPU collectives
      ops=all_gather,reduce_scatter,all_reduce
      [ "$strategy" != auto ] && ops=all_gather
      launch=("$MICS" launch -n "$gpus")
      [ "$nodes" -gt 1 ] && launch+=(--nodes "$nodes")
      cmd=("${launch[@]}" -- "$MICS" bench --op "$ops" --algo "$strategy" -b 1M -e 64M -f 4 -w 2 -n 5 -r 3 --json "$dir/result.json") ;;
    bench-nccl)
      bargs=("$SRC/bench/peers/torch_nccl_bench.py" -b 1M -e 1G -f 4 -w 5 -n 20 -r 3 --nodes "$nodes" --json "$dir/result.json")
      if [ "$gpus" = 1 ]; then cmd=("$PYTHON" "${bargs[@]}"); else cmd=("$TORCHRUN" --standalone --nproc_per_node "$gpus" "${bargs[@]}"); fi ;;
    bench-nccl-tests)
      # shellcheck disable=SC2016  # expanded by the inner bash
      cmd=(bash -c 'set -e; for op in all_gather reduce_scatter all_reduce; do echo "== $op"; "$0/${op}_perf" -b 1M -e 1G -f 4 -g 8 -w 5 -n 20; done' "$NCCL_TESTS_DIR") ;;
    *) die "internal: unknown system $system" ;;
  esac
  echo "== $name ($gpus GPU(s), $layout)"
  if [ "$DRY" = 1 ]; then
    printf '   '; run env "${envs[@]}" "${cmd[@]}"
    continue
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  {
    printf '{"name": %s, "gpus": %s, "layout": %s, "nodes": %s, "system": %s, "strategy": %s, ' \
      "$(json_str "$name")" "$gpus" "$(json_str "$layout")" "$nodes" "$(json_str "$system")" "$(json_str "$strategy")"
    printf '"partition_size": %s, "grad_accum": %s, "model_tag": %s, "model": %s, "micro_batch": %s, "seq_len": %s, ' \
      "$(json_str "$p")" "$(json_str "$S")" "$(json_str "$tag")" "$(json_str "$spec")" "$(json_str "$mb")" "$SEQ"
    printf '"steps": %s, "peak_flops": %s}\n' "$STEPS" "$PEAK_FLOPS"
  } >"$dir/row.json"
  printf '%q ' env "${envs[@]}" "${cmd[@]}" >"$dir/cmd.txt"
  echo >>"$dir/cmd.txt"
  start_mem "$dir"
  t0=$(date +%s)
  env "${envs[@]}" timeout --kill-after=30 "$ROW_TIMEOUT" "${cmd[@]}" >"$dir/log.txt" 2>&1 </dev/null
  rc=$?
  stop_mem
  echo "$rc" >"$dir/status"
  ran=$((ran + 1))
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    why="exit $rc"
    [ "$rc" = 124 ] && why="timed out after ${ROW_TIMEOUT}s"
    grep -qiE 'out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation' "$dir/log.txt" && why="$why, out of GPU memory"
    echo "   FAILED ($why) after $(($(date +%s) - t0)) s; last lines of $dir/log.txt:"
    tail -5 "$dir/log.txt" | sed 's/^/   | /'
  else
    echo "   ok in $(($(date +%s) - t0)) s"
  fi
done

[ "$DRY" = 1 ] && exit 0
echo "rows run: $ran (failed: $failed), skipped for lack of GPUs: $skipped_gpus, done before: $skipped_done"
"$PYTHON" "$SRC/bench/multigpu_summary.py" "$OUT" --peak-flops "$PEAK_FLOPS" >"$OUT/summary.md" || die "the summary failed (bench/multigpu_summary.py $OUT)"
cat "$OUT/summary.md"
# rows that did not fit in memory are results ("ddp where it fits"); other failures are not
[ "$failed" -eq 0 ] && exit 0
echo "multigpu.sh: $failed row(s) failed (see their log.txt; out-of-memory rows are marked in summary.md)" >&2
exit 1
