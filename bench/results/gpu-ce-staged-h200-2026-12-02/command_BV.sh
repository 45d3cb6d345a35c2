# call BV (1 GPU): the weight-gradient GEMMs on a second stream (MICS_EXP_OVERLAP=1) against one
# stream: the whole-model tests with it, then 3 interleaved rounds
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
( cd /tmp/bt && MICS_EXP_OVERLAP=1 timeout 60 tests/model_cuda_test --gtest_filter='CudaModel.*' > $OUT/model_cuda_test_overlap.log 2>&1; echo "model_cuda_test CudaModel.* overlap rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test_overlap.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/model_cuda_test_overlap.log | head -20 )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for r in 1 2 3; do
  for v in 0 1; do
    MICS_EXP_OVERLAP=$v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r$r.txt 2>&1
    echo "round $r mics overlap $v: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|final train|eval loss' /tmp/mics_r$r.txt | head -3 | tr -s ' ' | cut -c1-60 | tr '\n' ' ')"
  done
done
echo "total $(( $(date +%s) - T0 )) s"
# then, on the same warm machine (the second part of call BV):
# cd /tmp/bt && ninja -j16 train_cuda_test && MICS_EXP_OVERLAP=1 tests/train_cuda_test
