# call BT (1 GPU): the cross-entropy's rows staged in shared memory: model_cuda_test and
# train_cuda_test, a profile, then mics and llm.c interleaved, three rounds, then torch.compile
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j12 mics model_cuda_test train_cuda_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s ($(git rev-parse --short HEAD 2>/dev/null))"
( cd /tmp/bt && timeout 120 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A3 $OUT/model_cuda_test.log | head -20 )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > $OUT/mics_profile.txt 2>&1
grep -E "cross-entropy|total" $OUT/mics_profile.txt
( cd /tmp/bt && timeout 200 tests/train_cuda_test > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/train_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A3 $OUT/train_cuda_test.log | head -20 )
wait; tail -1 /tmp/llmc_bg.txt
echo "builds done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
for r in 1 2 3; do
  /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r$r.txt 2>&1
  echo "round $r mics: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|MFU|memory' /tmp/mics_r$r.txt | head -3 | tr -s ' ' | cut -c1-60 | tr '\n' ' ')"
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ') steps: $(grep -E '^step' /tmp/llmc_r$r/llmc_d12_b16.txt | awk -F'|' '{print $5}' | tr -s ' ' | tr '\n' ' ' | cut -c1-400)"
  cp /tmp/llmc_r$r/llmc_d12_b16.txt $OUT/llmc_r$r.txt 2>/dev/null
done
cp /tmp/mics_r3.txt $OUT/mics_r3.txt
echo "rounds done at $(( $(date +%s) - T0 )) s"
left=$(( 480 - ($(date +%s)-T0) ))
[ $left -gt 50 ] && ( PYTHONUNBUFFERED=1 timeout $left python3 bench/peers/torch_gpt2.py 16 1 2>&1 | tail -1 > $OUT/torch.txt; cat $OUT/torch.txt )
echo "total $(( $(date +%s) - T0 )) s"
