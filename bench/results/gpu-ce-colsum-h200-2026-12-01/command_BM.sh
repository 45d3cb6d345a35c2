# call BM (1 GPU): column sums in explicit 4-row batches (kept from BL); GELU's backward fused with
# fc's bias column sums after a plain fcproj GEMM (MICS_EXP_DGELU_PASS=1) against the DGELU
# epilogue; tests; mics (both) and llm.c interleaved, four rounds; torch.compile; train_cuda_test
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
ninja -C /tmp/bt -j4 train_cuda_test > /tmp/build2.log 2>&1 &
( cd /tmp/bt && timeout 120 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A3 $OUT/model_cuda_test.log | head -20 )
( cd /tmp/bt && MICS_EXP_DGELU_PASS=1 timeout 60 tests/model_cuda_test --gtest_filter='CudaModel.*' > /tmp/exp_test.log 2>&1; echo "dgelu-pass model tests rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/exp_test.log | tr '\n' ' ')"; grep -E "Failure" -A3 /tmp/exp_test.log | head; grep -E "worst" /tmp/exp_test.log | head -3 )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for v in 0 1; do MICS_EXP_DGELU_PASS=$v MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > /tmp/p.txt 2>&1; cp /tmp/p.txt $OUT/profile_dgelu$v.txt; echo "profile dgelu-pass $v: $(grep -E 'fcproj bwd|bias grads|cross-entropy|total' /tmp/p.txt | tr -s ' ' | tr '\n' ' ')"; done
wait; tail -1 /tmp/llmc_bg.txt
echo "builds done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
for r in 1 2 3 4; do
  for v in 0 1; do
    MICS_EXP_DGELU_PASS=$v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r${r}_$v.txt 2>&1
    echo "round $r mics dgelu-pass $v: $(grep -E '^ *tokens/s' /tmp/mics_r${r}_$v.txt | head -1 | tr -s ' ') $(grep -E 'step time|MFU|memory' /tmp/mics_r${r}_$v.txt | head -3 | tr -s ' ' | cut -c1-60 | tr '\n' ' ')"
  done
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ')"
done
cp /tmp/mics_r4_0.txt $OUT/mics_r4_0.txt; cp /tmp/mics_r4_1.txt $OUT/mics_r4_1.txt; cp /tmp/llmc_r4/llmc_d12_b16.txt $OUT/llmc_r4.txt 2>/dev/null
echo "rounds done at $(( $(date +%s) - T0 )) s"
left=$(( 540 - ($(date +%s)-T0) ))
[ $left -gt 60 ] && ( PYTHONUNBUFFERED=1 timeout 60 python3 bench/peers/torch_gpt2.py 16 1 2>&1 | tail -1 > $OUT/torch.txt; cat $OUT/torch.txt )
left=$(( 580 - ($(date +%s)-T0) ))
[ $left -gt 20 ] && ( cd /tmp/bt && timeout $left tests/train_cuda_test > /tmp/tct.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/tct.log | tr '\n' ' ')"; grep -E "Failure" -A3 /tmp/tct.log | head -10 )
echo "total $(( $(date +%s) - T0 )) s"
