# call AI (1 GPU): LayerNorm bwd grid variants after the reduce_chunks change: X 32 rows per block (up to 4x132 blocks), Y 16 rows (8x132); base = HEAD
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
for v in base varX varY; do
  cmake -S .gpuwork/$v -B /tmp/b_$v $CM > $OUT/configure_$v.log 2>&1
  T=mics; [ $v = varY ] && T="mics model_cuda_test"
  ninja -C /tmp/b_$v -j16 $T > $OUT/build_$v.log 2>&1 || { grep -E "error|FAILED" $OUT/build_$v.log | head -20; exit 1; }
done
echo "builds done at $(( $(date +%s) - T0 )) s"
( cd /tmp/b_varY && timeout 200 tests/model_cuda_test --gtest_filter="CudaKernels.*:CudaModel.*" > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure|Expected|Which is|seed" $OUT/model_cuda_test.log | head -30
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2 3; do
  for v in base varX varY; do
    /tmp/b_$v/mics $ARGS --log-every 10 --steps 30 > $OUT/run.txt 2>&1
    echo "round $r $v: $(grep -E '^ *tokens/s' $OUT/run.txt | head -1) $(grep -E 'step time' $OUT/run.txt | head -1) $(grep -E 'eval loss' $OUT/run.txt | head -1)"
  done
done
for v in base varX varY; do
  MICS_CUDA_PROFILE=1 /tmp/b_$v/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_$v.txt 2>&1
  echo "== profile $v: $(grep -E "layernorm bwd|bias grads|total " $OUT/profile_$v.txt | tr -s ' ' | tr '\n' ';')"
done
echo "total $(( $(date +%s) - T0 )) s"
