# call BD (1 GPU): kept changes (beta-0 weight GEMMs, LN-fused proj/fcproj bias sums, LN fwd in
# registers) tested; column sums over one wave vs 128-row chunks (A/B); ncu of the memory-bound kernels
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test train_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 150 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test.log | tr '\n' ' ')" )
grep -E "^\[  FAILED|Failure" $OUT/model_cuda_test.log | head
( cd /tmp/bt && timeout 150 tests/train_cuda_test > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/train_cuda_test.log | tr '\n' ' ')" )
grep -E "^\[  FAILED|Failure" $OUT/train_cuda_test.log | head
echo "tests done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
run() { env $2 /tmp/bt/mics $ARGS --steps 30 > /tmp/r_$1.txt 2>&1; echo "$1 [$2]: $(grep -E '^ *tokens/s' /tmp/r_$1.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/r_$1.txt | head -1 | tr -s ' ') $(grep -E 'loss' /tmp/r_$1.txt | tail -1 | tr -s ' ' | cut -c1-60)"; }
for r in 1 2 3; do
  run new$r "X=0"
  run colsum_old$r "MICS_EXP_COLSUM_OLD=1"
done
echo "rounds done at $(( $(date +%s) - T0 )) s"
MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 12 > $OUT/profile_new.txt 2>&1
MICS_EXP_COLSUM_OLD=1 MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 12 > $OUT/profile_colsum_old.txt 2>&1
for f in new colsum_old; do echo "== $f"; grep -E "layernorm|bias grads|cross|total|step time" $OUT/profile_$f.txt | head -8; done
timeout 150 ncu --clock-control none -k regex:"layernorm_backward_fused|cross_entropy_kernel|column_sum_partial8|layernorm_forward_regs" --launch-skip 300 --launch-count 12 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats \
  /tmp/bt/mics $ARGS --steps 3 --log-every 1 > $OUT/ncu.txt 2>&1
echo "ncu rc $?"
grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Warp Cycles Per Issued|Block Limit (Reg|Shared)|Grid Size|Waves Per SM" $OUT/ncu.txt | sed -E 's/ +/ /g' | cut -c1-150 | head -150
echo "total $(( $(date +%s) - T0 )) s"
