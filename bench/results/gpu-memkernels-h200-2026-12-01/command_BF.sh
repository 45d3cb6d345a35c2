# call BF (1 GPU): LayerNorm backward with the next row's x/dout prefetched by cp.async
# (MICS_EXP_LN_PREFETCH) and reduce_chunks over 32 warps (MICS_EXP_REDUCE32): tests with both on, A/B
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && MICS_EXP_LN_PREFETCH=1 MICS_EXP_REDUCE32=1 timeout 120 tests/model_cuda_test --gtest_filter='CudaModel.*:CudaKernels.Layer*:CudaKernels.Column*:CudaKernels.Linear*' > $OUT/tests_exp.log 2>&1; echo "tests (EXP on) rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/tests_exp.log | tr '\n' ' ')" )
grep -E "^\[  FAILED|Failure" $OUT/tests_exp.log | head
echo "tests done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
run() { env $2 /tmp/bt/mics $ARGS --steps 30 > /tmp/r_$1.txt 2>&1; echo "$1 [$2]: $(grep -E '^ *tokens/s' /tmp/r_$1.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/r_$1.txt | head -1 | tr -s ' ') $(grep -E 'loss' /tmp/r_$1.txt | tail -1 | tr -s ' ' | cut -c1-60)"; }
for r in 1 2 3; do
  run base$r "X=0"
  run pf$r "MICS_EXP_LN_PREFETCH=1"
  run r32_$r "MICS_EXP_REDUCE32=1"
  run both$r "MICS_EXP_LN_PREFETCH=1 MICS_EXP_REDUCE32=1"
done
echo "rounds done at $(( $(date +%s) - T0 )) s"
MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 12 > $OUT/profile_base.txt 2>&1
MICS_EXP_LN_PREFETCH=1 MICS_EXP_REDUCE32=1 MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 12 > $OUT/profile_both.txt 2>&1
for f in base both; do echo "== $f"; grep -E "layernorm|bias grads|total|step time" $OUT/profile_$f.txt | head -7; done
echo "total $(( $(date +%s) - T0 )) s"
