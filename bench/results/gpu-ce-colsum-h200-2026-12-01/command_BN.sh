# call BN (1 GPU): the fused GELU-backward + fc bias column-sum pass with the hardware tanh
# (MICS_EXP_DGELU_PASS=2) against the DGELU epilogue (0); mics interleaved, then llm.c
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j12 mics model_cuda_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && MICS_EXP_DGELU_PASS=2 timeout 60 tests/model_cuda_test --gtest_filter='CudaKernels.Gelu*:CudaKernels.ColumnSums:CudaModel.LossAndGradientsMatchCpu*' > /tmp/exp_test.log 2>&1; echo "fast dgelu-pass tests rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/exp_test.log | tr '\n' ' ')"; grep -E "Failure" -A3 /tmp/exp_test.log | head; grep -E "worst" /tmp/exp_test.log | head -2 )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for v in 0 2; do MICS_EXP_DGELU_PASS=$v MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > /tmp/p.txt 2>&1; cp /tmp/p.txt $OUT/profile_dgelu$v.txt; echo "profile dgelu-pass $v: $(grep -E 'fcproj bwd|bias grads|total' /tmp/p.txt | tr -s ' ' | tr '\n' ' ')"; done
for r in 1 2 3; do
  for v in 0 2; do
    MICS_EXP_DGELU_PASS=$v /tmp/bt/mics $ARGS --steps 30 > /tmp/m.txt 2>&1
    echo "round $r mics dgelu-pass $v: $(grep -E '^ *tokens/s' /tmp/m.txt | head -1 | tr -s ' ') $(grep -E 'eval loss' /tmp/m.txt | tail -1 | tr -s ' ' | cut -c1-40)"
  done
done
wait; tail -1 /tmp/llmc_bg.txt
echo "rounds done at $(( $(date +%s) - T0 )) s"
for r in 1 2; do
  left=$(( 330 - ($(date +%s)-T0) )); [ $left -lt 40 ] && break
  LLMC_WORK=/tmp/llmc-work timeout $left bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ')"
  MICS_EXP_DGELU_PASS=0 /tmp/bt/mics $ARGS --steps 30 > /tmp/m.txt 2>&1; echo "round $r mics after llm.c: $(grep -E '^ *tokens/s' /tmp/m.txt | head -1 | tr -s ' ')"
done
echo "total $(( $(date +%s) - T0 )) s"
