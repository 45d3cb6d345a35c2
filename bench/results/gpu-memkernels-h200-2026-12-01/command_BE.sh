# call BE (1 GPU): ncu of the memory-bound kernels at HEAD (7b1d89a): LayerNorm bwd/fwd, column sums,
# reduce_chunks, cross-entropy, adamw: duration, DRAM throughput, occupancy, stall reasons
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 1 --model gpt2-124m --micro-batch 16 --log-every 1 --steps 3"
M=smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_drain_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct
for k in layernorm_backward_fused cross_entropy_kernel column_sum_partial8 reduce_chunks layernorm_forward_regs adamw_kernel; do
  timeout 100 ncu --clock-control none -k regex:$k --launch-skip 30 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --metrics $M \
    /tmp/bt/mics $ARGS > $OUT/ncu_$k.txt 2>&1
  echo "== $k (rc $?)"
  grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Block Size|Waves Per SM|stalled|dram__bytes|hit_rate" $OUT/ncu_$k.txt | sed -E 's/ +/ /g; s/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-120 | head -48
done
echo "total $(( $(date +%s) - T0 )) s"
