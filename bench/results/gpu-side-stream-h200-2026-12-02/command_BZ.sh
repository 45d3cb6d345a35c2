# call BZ (1 GPU): the final form (LayerNorm backward's reductions on the side stream by default) against MICS_EXP_SIDE_REDUCE=0
# (the in-line reductions), the tests, then five interleaved rounds
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD; mkdir -p /tmp/res
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; [ -d $F ] || dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
[ -f /tmp/bt/build.ninja ] || cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j12 mics model_cuda_test train_cuda_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
( cd /tmp/bt && timeout 150 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/model_cuda_test.log | head -20 )
( cd /tmp/bt && timeout 200 tests/train_cuda_test > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/train_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/train_cuda_test.log | head -20 )
( cd /tmp/bt && MICS_EXP_SIDE_REDUCE=0 timeout 60 tests/model_cuda_test --gtest_filter='CudaModel.*' > /tmp/m.log 2>&1; echo "model_cuda_test CudaModel.* [MICS_EXP_SIDE_REDUCE=0] rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/m.log | tr '\n' ' ')"; grep -E "Failure" -A4 /tmp/m.log | head -12 )
echo "builds done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
V0="MICS_EXP_SIDE_REDUCE=1"
V1="MICS_EXP_SIDE_REDUCE=0"
for r in 1 2 3 4 5; do
  for v in "$V0" "$V1"; do
    env $v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics.txt 2>&1
    [ "$v" = "$V0" ] && cp /tmp/mics.txt /tmp/res/mics_r$r.txt
    echo "round $r [$v]: $(grep -E '^ *tokens/s' /tmp/mics.txt | head -1 | tr -s ' ') $(grep -E 'step time|MFU|memory|final train' /tmp/mics.txt | head -4 | tr -s ' ' | cut -c1-50 | tr '\n' ' ')"
  done
  echo "at $(( $(date +%s) - T0 )) s"
done
tar -czf $OUT/round_logs.tgz -C /tmp/res .
echo "total $(( $(date +%s) - T0 )) s"
