# call BU (1 GPU): cross-entropy with the row staged in shared memory, one cp.async group per batch
# (MICS_EXP_CE_STAGED=1, the
# logits read from DRAM once) against the current kernel: tests, profiles, 3 interleaved rounds
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
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
( cd /tmp/bt && for v in 1 0; do MICS_EXP_CE_STAGED=$v timeout 150 tests/model_cuda_test --gtest_filter='CudaKernels.CrossEntropy*:CudaKernels.VocabSlice*:CudaModel.LossAndGradientsMatchCpu*' > $OUT/model_cuda_test_ce$v.log 2>&1; echo "model_cuda_test ce$v rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test_ce$v.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/model_cuda_test_ce$v.log | head -20; done )
grep -q "FAILED" $OUT/model_cuda_test_ce1.log && { echo "staged CE failed; stopping"; exit 1; }
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for rep in 1 2; do for v in 0 1; do
  MICS_EXP_CE_STAGED=$v MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > /tmp/p.txt 2>&1; cp /tmp/p.txt $OUT/profile_ce$v.txt
  echo "profile ce $v: $(grep -E 'cross-entropy|total|final train|eval loss' /tmp/p.txt | tr -s ' ' | tr '\n' ' ')"
done; done
for r in 1 2 3; do
  for v in 0 1; do
    MICS_EXP_CE_STAGED=$v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r$r.txt 2>&1
    echo "round $r mics ce $v: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|final train|eval loss' /tmp/mics_r$r.txt | head -3 | tr -s ' ' | cut -c1-60 | tr '\n' ' ')"
  done
done
echo "total $(( $(date +%s) - T0 )) s"
