# call AV (1 GPU): experiments behind temporary env switches in one binary: MICS_EXP_CE
# (cross-entropy's first pass chunk-wise with ex2.approx), MICS_EXP_LN (LayerNorm backward
# loads dx with dout/x; 3 x 132 blocks); kernel tests under each; 4 configs x 3 rounds
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
for e in "X=1" "MICS_EXP_CE=1" "MICS_EXP_LN=1"; do
  ( cd /tmp/bt && env $e timeout 60 tests/model_cuda_test --gtest_filter="CudaKernels.CrossEntropy*:CudaKernels.LayerNorm*:CudaModel.LossAndGradientsMatchCpu" > /tmp/kt.log 2>&1; echo "$e: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/kt.log | tr '\n' ' ') rc $?" )
done
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
run() { # name env...
  local n=$1; shift
  env "$@" /tmp/bt/mics $ARGS --log-every 10 --steps 30 > /tmp/$n.txt 2>&1
  echo "$n: $(grep -E '^ *tokens/s' /tmp/$n.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/$n.txt | head -1 | tr -s ' ') $(grep -E 'eval loss|val loss' /tmp/$n.txt | tail -1 | tr -s ' ')"
}
for r in 1 2 3; do
  run r${r}_none X=1
  run r${r}_ce MICS_EXP_CE=1
  run r${r}_ln MICS_EXP_LN=1
  run r${r}_both MICS_EXP_CE=1 MICS_EXP_LN=1
done
for e in "X=1" "MICS_EXP_CE=1 MICS_EXP_LN=1"; do
  env $e MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --log-every 10 --steps 12 > /tmp/p.txt 2>&1
  echo "profile $e:"; grep -E "layernorm bwd|cross|total " /tmp/p.txt
done
tail -5 /tmp/r1_none.txt > $OUT/r1_none_tail.txt
echo "total $(( $(date +%s) - T0 )) s"
