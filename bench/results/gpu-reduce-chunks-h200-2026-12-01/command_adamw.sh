# call AJ (1 GPU): AdamW through float4 loads and stores when aligned; kernel tests, then HEAD vs new, interleaved
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > $OUT/configure.log 2>&1
cmake -S .gpuwork/base -B /tmp/bb $CM > $OUT/configure_base.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
ninja -C /tmp/bb -j16 mics > $OUT/build_base.log 2>&1 || { grep -E "error|FAILED" $OUT/build_base.log | head -20; exit 1; }
echo "builds done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 200 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure|Expected|Which is|seed" $OUT/model_cuda_test.log | head -30
echo "tests done at $(( $(date +%s) - T0 )) s"
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2 3; do
  for b in bb bt; do
    /tmp/$b/mics $ARGS --log-every 10 --steps 30 > $OUT/r${r}_$b.txt 2>&1
    echo "round $r $b: $(grep -E '^ *tokens/s' $OUT/r${r}_$b.txt | head -1) $(grep -E 'step time' $OUT/r${r}_$b.txt | head -1)"
  done
done
for b in bb bt; do
  MICS_CUDA_PROFILE=1 /tmp/$b/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_$b.txt 2>&1
  echo "== profile $b"; grep -E "adamw|total |step time" $OUT/profile_$b.txt
done
echo "total $(( $(date +%s) - T0 )) s"
