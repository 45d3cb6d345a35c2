# call AS (1 GPU): GEMM autotuning over 16 of the heuristic's candidates against the default 8 (HEAD)
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics > /tmp/build.log 2>&1 || { grep -E "error" /tmp/build.log | head; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2; do
  for t in 8 16; do
    MICS_CUDA_GEMM_TUNE=$t /tmp/bt/mics $ARGS --log-every 10 --steps 30 > /tmp/r${r}_$t.txt 2>&1
    echo "round $r tune $t: $(grep -E '^ *tokens/s' /tmp/r${r}_$t.txt | head -1 | tr -s ' ') $(grep -iE 'gemm.*tun|tune' /tmp/r${r}_$t.txt | head -1 | tr -s ' ')"
  done
done
for t in 8 16; do
  MICS_CUDA_GEMM_TUNE=$t MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_tune$t.txt 2>&1
  echo "== profile tune $t: $(grep -E 'gemm|total ' $OUT/profile_tune$t.txt | tr -s ' ' | cut -c1-60 | tr '\n' ';')"
done
echo "total $(( $(date +%s) - T0 )) s"
