# call AP (1 GPU): dQ scratch zeroed by the Di pre-pass (no memset) vs HEAD; kernel + trainer tests;
# GPT-2 124M B16 side by side: mics (this tree), PyTorch torch.compile, llm.c (cuDNN), 2 interleaved rounds
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > /tmp/configure.log 2>&1
cmake -S .gpuwork/base -B /tmp/bb $CM > /tmp/configure_base.log 2>&1
ninja -C /tmp/bt -j12 mics model_cuda_test train_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
ninja -C /tmp/bb -j12 mics > /tmp/build_base.log 2>&1 || { grep -E "error|FAILED" /tmp/build_base.log | head -20; exit 1; }
wait
echo "builds done at $(( $(date +%s) - T0 )) s; $(tail -1 /tmp/llmc_bg.txt)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
( cd /tmp/bt && timeout 150 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure" $OUT/model_cuda_test.log | head
( cd /tmp/bt && timeout 150 tests/train_cuda_test --gtest_filter="Layouts/TrainCuda.*:TrainCudaRecompute.*:TrainCudaEval.*:TrainCudaCheckpoint.*" > $OUT/t1.log 2>&1; echo "rc $?" >> $OUT/t1.log )
grep -E "^\[ +(FAILED|PASSED) +\]|^rc|Failure" $OUT/t1.log | head
echo "tests done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2; do
  for b in bb bt; do
    /tmp/$b/mics $ARGS --log-every 10 --steps 30 > /tmp/ab${r}_$b.txt 2>&1
    echo "A/B round $r $b: $(grep -E '^ *tokens/s' /tmp/ab${r}_$b.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/ab${r}_$b.txt | head -1 | tr -s ' ')"
  done
done
MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_bt.txt 2>&1
grep -E "attention|total |step time|peak|memory" $OUT/profile_bt.txt | head -8
for r in 1 2; do
  /tmp/bt/mics $ARGS --log-every 10 --steps 30 > /tmp/mics_r$r.txt 2>&1
  echo "round $r mics: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|MFU|memory' /tmp/mics_r$r.txt | head -3 | tr -s ' ' | tr '\n' ' ')"
  PYTHONUNBUFFERED=1 python3 bench/peers/torch_gpt2.py 16 1 > /tmp/torch_r$r.txt 2>&1
  echo "round $r torch: $(tail -2 /tmp/torch_r$r.txt | tr '\n' ' ')"
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ') $(tail -1 /tmp/llmc_r$r.log)"
done
echo "side by side done at $(( $(date +%s) - T0 )) s"
cp /tmp/mics_r1.txt /tmp/torch_r1.txt $OUT/ 2>/dev/null
left=$(( 560 - ($(date +%s) - T0) ))
[ $left -gt 40 ] && ( cd /tmp/bt && timeout $left tests/train_cuda_test --gtest_filter="Meshes/TrainCudaMesh.*" > $OUT/t2.log 2>&1; echo "rc $?" >> $OUT/t2.log ) && grep -E "^\[ +(FAILED|PASSED|       OK) +\]|^rc|Failure" $OUT/t2.log | head -14
echo "total $(( $(date +%s) - T0 )) s"
