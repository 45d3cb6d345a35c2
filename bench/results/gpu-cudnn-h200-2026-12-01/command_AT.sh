# call AT (1 GPU): cuDNN fused SDPA (backend API) as the attention: kernel + model tests, A/B
# against mics' own kernels (MICS_CUDA_CUDNN_ATTENTION=0, same binary), llm.c side by side
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > $OUT/configure.log 2>&1
grep -i "cudnn" $OUT/configure.log
ls /usr/include/cudnn_graph*.h /usr/include/x86_64-linux-gnu/cudnn_graph*.h 2>/dev/null; grep -h "define CUDNN_M\|define CUDNN_PATCH" /usr/include/cudnn_version*.h /usr/include/x86_64-linux-gnu/cudnn_version*.h 2>/dev/null | head -3
ninja -C /tmp/bt -j14 mics model_cuda_test train_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
( cd /tmp/bt && CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=$OUT/cudnn_test_errors.log timeout 100 tests/model_cuda_test --gtest_filter="*Cudnn*" > $OUT/cudnn_test.log 2>&1; echo "rc $?" >> $OUT/cudnn_test.log )
grep -E "^\[ +(FAILED|PASSED|       OK) +\]|^rc|Failure|cuDNN|attention:|unavailable|\] loss" $OUT/cudnn_test.log | head -40
head -c 3000 $OUT/cudnn_test_errors.log 2>/dev/null
echo "cudnn tests done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
/tmp/bt/mics $ARGS --log-every 10 --steps 10 > $OUT/first_run.txt 2>&1; echo "first run rc $?"; grep -iE "attention|error|cudnn" $OUT/first_run.txt | head -5
for r in 1 2 3; do
  for k in 0 1; do
    MICS_CUDA_CUDNN_ATTENTION=$k /tmp/bt/mics $ARGS --log-every 10 --steps 30 > /tmp/ab${r}_$k.txt 2>&1
    echo "A/B round $r cudnn=$k: $(grep -E '^ *tokens/s' /tmp/ab${r}_$k.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/ab${r}_$k.txt | head -1 | tr -s ' ')"
  done
done
cp /tmp/ab1_1.txt $OUT/mics_cudnn_run.txt
for k in 1 0; do MICS_CUDA_CUDNN_ATTENTION=$k MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_cudnn$k.txt 2>&1; done
grep -E "attention|total |step time|peak|memory" $OUT/profile_cudnn1.txt $OUT/profile_cudnn0.txt | head -12
wait
echo "A/B done at $(( $(date +%s) - T0 )) s; $(tail -1 /tmp/llmc_bg.txt)"
for r in 1 2; do
  /tmp/bt/mics $ARGS --log-every 10 --steps 30 > /tmp/mics_r$r.txt 2>&1
  echo "round $r mics: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|MFU|memory' /tmp/mics_r$r.txt | head -3 | tr -s ' ' | tr '\n' ' ')"
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ') $(tail -1 /tmp/llmc_r$r.log)"
done
echo "side by side done at $(( $(date +%s) - T0 )) s"
left=$(( 540 - ($(date +%s) - T0) ))
[ $left -gt 60 ] && ( cd /tmp/bt && timeout $left tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log ) && grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure" $OUT/model_cuda_test.log | head
echo "total $(( $(date +%s) - T0 )) s"
