# call BK (1 GPU): cross-entropy with kLoads loads in flight (MICS_EXP_CE_LOADS=0..4), fc's bias
# gradient from the fcproj backward GEMM's DGELU_BGRAD epilogue (MICS_EXP_BGRAD=1), the zero-grads
# memset gone (all configs); tests first
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 120 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test.log | tr '\n' ' ')"; grep -E "FAILED|Failure" -A3 $OUT/model_cuda_test.log | head -30 )
( cd /tmp/bt && MICS_EXP_BGRAD=1 MICS_EXP_CE_LOADS=3 timeout 60 tests/model_cuda_test --gtest_filter='CudaKernels.Cross*:CudaModel.*' > /tmp/exp_test.log 2>&1; echo "exp model tests rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/exp_test.log | tr '\n' ' ')"; grep -E "Failure|worst" -A2 /tmp/exp_test.log | head -30 )
ninja -C /tmp/bt -j16 train_cuda_test > /tmp/build2.log 2>&1 &
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
cfgs="0:0 2:0 3:0 4:0 0:1 3:1"
for r in 1 2; do
  for c in $cfgs; do
    MICS_EXP_CE_LOADS=${c%:*} MICS_EXP_BGRAD=${c#*:} /tmp/bt/mics $ARGS --steps 30 > /tmp/r.txt 2>&1
    echo "round $r ce:bgrad $c: $(grep -E '^ *tokens/s' /tmp/r.txt | head -1 | tr -s ' ') $(grep -E 'loss' /tmp/r.txt | tail -1 | tr -s ' ' | cut -c1-80)"
  done
done
echo "rounds done at $(( $(date +%s) - T0 )) s"
for c in $cfgs; do MICS_EXP_CE_LOADS=${c%:*} MICS_EXP_BGRAD=${c#*:} MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > /tmp/p.txt 2>&1; cp /tmp/p.txt $OUT/profile_$c.txt; echo "profile $c: $(grep -E 'cross-entropy|bias grads|fcproj bwd|zero|total' /tmp/p.txt | tr -s ' ' | tr '\n' ' ')"; done
wait
left=$(( 560 - ($(date +%s)-T0) ))
[ $left -gt 30 ] && ( cd /tmp/bt && timeout $left tests/train_cuda_test > /tmp/tct.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/tct.log | tr '\n' ' ')"; grep -E "Failure" -A3 /tmp/tct.log | head -20 )
echo "total $(( $(date +%s) - T0 )) s"
