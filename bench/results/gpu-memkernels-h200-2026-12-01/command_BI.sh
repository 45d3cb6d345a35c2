# call BI (1 GPU): cross-entropy with its blocks per SM capped (MICS_EXP_CE_BPS=1/2/3; 4 now), so
# that a row's second read finds it in L2
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
( cd /tmp/bt && MICS_EXP_CE_BPS=2 timeout 60 tests/model_cuda_test --gtest_filter='CudaKernels.Cross*:CudaModel.LossAndGradientsMatchCpu' 2>&1 | grep -E '^\[ +(FAILED|PASSED) +\]' )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for r in 1 2; do
  for b in 0 3 2 1; do
    MICS_EXP_CE_BPS=$b /tmp/bt/mics $ARGS --steps 30 > /tmp/r.txt 2>&1
    echo "round $r bps $b: $(grep -E '^ *tokens/s' /tmp/r.txt | head -1 | tr -s ' ')"
  done
done
for b in 0 3 2 1; do MICS_EXP_CE_BPS=$b MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > /tmp/p.txt 2>&1; echo "profile bps $b: $(grep -E 'cross-entropy|total' /tmp/p.txt | tr -s ' ' | tr '\n' ' ')"; done
echo "total $(( $(date +%s) - T0 )) s"
