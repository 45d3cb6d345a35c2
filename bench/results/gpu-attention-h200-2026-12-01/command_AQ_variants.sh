# call AQ (1 GPU): two variants of HEAD's attention: A forward rescales only when a row's max grows
# by > 8 (log2); B dQ atomics as float4. Kernel tests of each, then HEAD/A/B interleaved, 2 rounds.
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
for v in base varA varB; do cmake -S .gpuwork/$v -B /tmp/$v $CM > /tmp/configure_$v.log 2>&1; done
ninja -C /tmp/base -j6 mics > /tmp/build_base.log 2>&1 &
ninja -C /tmp/varA -j5 mics model_cuda_test > /tmp/build_varA.log 2>&1 &
ninja -C /tmp/varB -j5 mics model_cuda_test > /tmp/build_varB.log 2>&1 &
wait
for v in base varA varB; do [ -x /tmp/$v/mics ] || { echo "build $v failed"; grep -E "error" /tmp/build_$v.log | head; exit 1; }; done
echo "builds done at $(( $(date +%s) - T0 )) s"
for v in varA varB; do
  ( cd /tmp/$v && timeout 120 tests/model_cuda_test > /tmp/t_$v.log 2>&1; echo "rc $?" >> /tmp/t_$v.log )
  echo "$v: $(grep -E '^\[ +(FAILED|PASSED) +\]|^rc' /tmp/t_$v.log | tr '\n' ' ') $(grep -E 'flash bh3 T200 D64, bwd stages 1 min blocks 3' /tmp/t_$v.log | head -1)"
  grep -E "Failure|Expected|Which is" /tmp/t_$v.log | head -5
done
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2; do
  for v in base varA varB; do
    /tmp/$v/mics $ARGS --log-every 10 --steps 30 > /tmp/r${r}_$v.txt 2>&1
    echo "round $r $v: $(grep -E '^ *tokens/s' /tmp/r${r}_$v.txt | head -1 | tr -s ' ') $(grep -E 'eval loss' /tmp/r${r}_$v.txt | tail -1 | tr -s ' ')"
  done
done
for v in base varA varB; do
  MICS_CUDA_PROFILE=1 /tmp/$v/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_$v.txt 2>&1
  echo "== profile $v: $(grep -E 'attention (fwd|bwd)|total ' $OUT/profile_$v.txt | tr -s ' ' | tr '\n' ' ')"
done
echo "total $(( $(date +%s) - T0 )) s"
