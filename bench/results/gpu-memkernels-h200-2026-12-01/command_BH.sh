# call BH (1 GPU): GPT-2 124M B16 side by side, interleaved rounds at HEAD: mics, llm.c, mics,
# llm.c, mics, llm.c, then torch.compile once (time permitting)
set -u
export NCCL_NVLS_ENABLE=0
t0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j14 mics > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
wait; tail -1 /tmp/llmc_bg.txt
echo "builds done at $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for r in 1 2 3; do
  /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r$r.txt 2>&1
  echo "round $r mics: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|MFU' /tmp/mics_r$r.txt | head -2 | tr -s ' ' | cut -c1-70 | tr '\n' ' ')"
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ')"
  cp /tmp/llmc_r$r/llmc_d12_b16.txt $OUT/llmc_r$r.txt 2>/dev/null; cp /tmp/mics_r$r.txt $OUT/mics_r$r.txt
done
echo "rounds done at $(( $(date +%s) - t0 )) s"
left=$(( 500 - ($(date +%s)-t0) ))
[ $left -gt 60 ] && ( PYTHONUNBUFFERED=1 timeout $left python3 bench/peers/torch_gpt2.py 16 1 2>&1 | tail -3 > $OUT/torch.txt; cat $OUT/torch.txt )
echo "total $(( $(date +%s) - t0 )) s"
