# call AZ (1 GPU): temporary switches in one binary: MICS_EXP_COLSUM (bias-gradient column sums
# with all 16 row loads of a thread unrolled, was 4), MICS_EXP_NORM (grad norm with float4 loads);
# model_cuda_test under each; 4 configs x 2 rounds; profiles
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && MICS_EXP_COLSUM=1 MICS_EXP_NORM=1 timeout 60 tests/model_cuda_test > /tmp/kt.log 2>&1; echo "tests with both: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/kt.log | tr '\n' ' ')"; grep -E "^\[  FAILED" /tmp/kt.log | head )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
run() { local n=$1; shift
  env "$@" /tmp/bt/mics $ARGS --log-every 10 --steps 30 > /tmp/$n.txt 2>&1
  echo "$n: $(grep -E '^ *tokens/s' /tmp/$n.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/$n.txt | head -1 | tr -s ' ')"; }
for r in 1 2; do
  run r${r}_none X=1; run r${r}_colsum MICS_EXP_COLSUM=1; run r${r}_norm MICS_EXP_NORM=1; run r${r}_both MICS_EXP_COLSUM=1 MICS_EXP_NORM=1
done
for e in "X=1" "MICS_EXP_COLSUM=1 MICS_EXP_NORM=1"; do
  env $e MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --log-every 10 --steps 12 > /tmp/p.txt 2>&1
  echo "profile $e:"; grep -E "bias grads|grad norm|total " /tmp/p.txt
done
echo "total $(( $(date +%s) - T0 )) s"
