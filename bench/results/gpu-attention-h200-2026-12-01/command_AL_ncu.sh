# call AL (1 GPU): Nsight Compute on the fused attention kernels (mics, GPT-2 124M B16 T1024), and
# llm.c's per-kernel durations (cuDNN attention) for the same shape.
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j12 mics > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
wait
echo "builds done at $(( $(date +%s) - T0 )) s; $(tail -2 /tmp/llmc_bg.txt | tr '\n' ' ')"
which ncu; ncu --version | tail -1
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 1 --model gpt2-124m --micro-batch 16 --steps 2 --log-every 1"
SEC="--section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats"
for k in flash_fwd_kernel flash_bwd_kernel; do
  timeout 240 ncu --clock-control none -k regex:$k --launch-skip 12 --launch-count 1 $SEC /tmp/bt/mics $ARGS > $OUT/ncu_$k.txt 2>&1
  echo "== $k rc $?"
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Issued Ipc|Stall|L1/TEX Hit|Shared Memory|Executed Ipc|One or More|No Eligible|Active Warps Per|Eligible Warps|Block Limit" $OUT/ncu_$k.txt | grep -v "^==PROF" | head -40
done
# raw stall breakdown (smsp__pcsamp) for the bwd kernel
timeout 200 ncu --clock-control none -k regex:flash_bwd_kernel --launch-skip 12 --launch-count 1 --metrics smsp__average_warp_latency_issue_stalled_barrier,smsp__average_warp_latency_issue_stalled_short_scoreboard,smsp__average_warp_latency_issue_stalled_long_scoreboard,smsp__average_warp_latency_issue_stalled_mio_throttle,smsp__average_warp_latency_issue_stalled_math_pipe_throttle,smsp__average_warp_latency_issue_stalled_wait,smsp__average_warp_latency_issue_stalled_not_selected,smsp__average_warp_latency_issue_stalled_selected,smsp__average_warp_latency_issue_stalled_lg_throttle,smsp__average_warp_latency_issue_stalled_dispatch_stall,smsp__average_warp_latency_issue_stalled_tex_throttle,smsp__average_warp_latency_issue_stalled_membar,smsp__average_warp_latency_issue_stalled_drain,smsp__inst_executed_pipe_tensor_op_hmma.sum,smsp__inst_executed.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,sm__cycles_elapsed.avg,smsp__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_pipe_xu.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum /tmp/bt/mics $ARGS > $OUT/ncu_bwd_stalls.txt 2>&1
grep -E "smsp__|l1tex__|sm__" $OUT/ncu_bwd_stalls.txt | head -30
timeout 200 ncu --clock-control none -k regex:flash_fwd_kernel --launch-skip 12 --launch-count 1 --metrics smsp__average_warp_latency_issue_stalled_barrier,smsp__average_warp_latency_issue_stalled_short_scoreboard,smsp__average_warp_latency_issue_stalled_long_scoreboard,smsp__average_warp_latency_issue_stalled_mio_throttle,smsp__average_warp_latency_issue_stalled_math_pipe_throttle,smsp__average_warp_latency_issue_stalled_wait,smsp__average_warp_latency_issue_stalled_not_selected,smsp__average_warp_latency_issue_stalled_selected,smsp__average_warp_latency_issue_stalled_dispatch_stall,smsp__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_pipe_xu.sum,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum /tmp/bt/mics $ARGS > $OUT/ncu_fwd_stalls.txt 2>&1
grep -E "smsp__|l1tex__" $OUT/ncu_fwd_stalls.txt | head -20
echo "mics ncu done at $(( $(date +%s) - T0 )) s"
# llm.c: every kernel of one training step (after the first few steps), durations only
cd /tmp/llmc-work && timeout 240 ncu --clock-control none --launch-skip 2000 --launch-count 400 --section SpeedOfLight --print-summary per-kernel ./train_gpt2cu -i $D/rand_train.bin -j $D/rand_val.bin -e d12 -b 16 -t 1024 -x 12 -v 100000 -s 0 -r 0 > $OUT/llmc_ncu.txt 2>&1
echo "llmc ncu rc $?"
cd $R
python3 - $OUT/llmc_ncu.txt <<'PY'
import sys,re
# per-kernel summary blocks: kernel name line, then "Duration" with min/max/avg
txt=open(sys.argv[1]).read().splitlines()
name=None; cnt=None
for i,l in enumerate(txt):
    m=re.match(r'^\s{2}(\S.*\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\).*)$', l)
    if m: name=m.group(1)[:110]
    if 'Invocations' in l or 'invocations' in l: cnt=l.strip()
    if 'Duration' in l and name:
        print(name,'|',cnt,'|',l.strip()); name=None
PY
echo "total $(( $(date +%s) - T0 )) s"
