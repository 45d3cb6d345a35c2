# call AR (1 GPU): fc forward as a bias GEMM + a vectorized GELU kernel (llm.c's split) instead of
# cuBLASLt's GELU_AUX_BIAS epilogue; HEAD vs tree, 2 interleaved rounds, profiles
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > /tmp/configure.log 2>&1
cmake -S .gpuwork/base -B /tmp/bb $CM > /tmp/configure_base.log 2>&1
ninja -C /tmp/bt -j9 mics model_cuda_test > /tmp/build.log 2>&1 &
ninja -C /tmp/bb -j7 mics > /tmp/build_base.log 2>&1 &
wait
for b in bt bb; do [ -x /tmp/$b/mics ] || { echo "build $b failed"; grep -E "error" /tmp/build*.log | head; exit 1; }; done
echo "builds done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 120 tests/model_cuda_test > /tmp/t.log 2>&1; echo "rc $?" >> /tmp/t.log )
echo "tests: $(grep -E '^\[ +(FAILED|PASSED) +\]|^rc' /tmp/t.log | tr '\n' ' ')"; grep -E "Failure|Expected|Which is" /tmp/t.log | head -5
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2; do
  for b in bb bt; do
    /tmp/$b/mics $ARGS --log-every 10 --steps 30 > /tmp/r${r}_$b.txt 2>&1
    echo "round $r $b: $(grep -E '^ *tokens/s' /tmp/r${r}_$b.txt | head -1 | tr -s ' ') $(grep -E 'eval loss' /tmp/r${r}_$b.txt | tail -1 | tr -s ' ')"
  done
done
for b in bb bt; do
  MICS_CUDA_PROFILE=1 /tmp/$b/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_$b.txt 2>&1
  echo "== profile $b: $(grep -E 'gemm fc fwd|total ' $OUT/profile_$b.txt | tr -s ' ' | tr '\n' ' ')"
done
echo "total $(( $(date +%s) - T0 )) s"
