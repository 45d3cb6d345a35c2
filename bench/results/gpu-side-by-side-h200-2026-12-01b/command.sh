# call AF (1 GPU): GPT-2 124M B16 side by side after GEMM autotuning: mics (HEAD), PyTorch
# torch.compile, llm.c (cuDNN attention); two interleaved rounds each.
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT/llmc_build_only none > $OUT/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j12 mics > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
wait
echo "builds done at $(( $(date +%s) - T0 )) s; $(tail -2 $OUT/llmc_bg.txt | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2; do
  /tmp/bt/mics $ARGS --log-every 10 --steps 30 > $OUT/mics_r$r.txt 2>&1
  echo "round $r mics: $(grep -E '^ *tokens/s' $OUT/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time' $OUT/mics_r$r.txt | head -1 | tr -s ' ')"
  PYTHONUNBUFFERED=1 python3 bench/peers/torch_gpt2.py 16 1 > $OUT/torch_r$r.txt 2>&1
  echo "round $r torch: $(tail -2 $OUT/torch_r$r.txt | tr '\n' ' ')"
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT/llmc_r$r d12:16 > $OUT/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat $OUT/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ') $(tail -1 $OUT/llmc_r$r.log)"
done
echo "total $(( $(date +%s) - T0 )) s"
