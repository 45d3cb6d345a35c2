# call AU (1 GPU): base = HEAD (cuDNN SDPA, deterministic dQ, old cross-entropy) vs the tree
# (cross-entropy with rows in registers; cuDNN dQ by atomics by default, =1 deterministic);
# tests; side by side with llm.c and torch.compile; GPT-2 350M / 774M for mics
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > /tmp/configure.log 2>&1
cmake -S .gpuwork/base -B /tmp/bb $CM > /tmp/configure_base.log 2>&1
ninja -C /tmp/bt -j10 mics model_cuda_test train_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
ninja -C /tmp/bb -j6 mics > /tmp/build_base.log 2>&1 || { grep -E "error|FAILED" /tmp/build_base.log | head -20; exit 1; }
echo "builds done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
( cd /tmp/bt && timeout 150 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure" $OUT/model_cuda_test.log | head
grep -E "^\[cuDNN|\] loss cpu" $OUT/model_cuda_test.log | head -30
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
run() { # name binary env...
  local n=$1 b=$2; shift 2
  env "$@" /tmp/$b/mics $ARGS --log-every 10 --steps 30 > /tmp/$n.txt 2>&1
  echo "$n: $(grep -E '^ *tokens/s' /tmp/$n.txt | head -1 | tr -s ' ') $(grep -E 'step time' /tmp/$n.txt | head -1 | tr -s ' ')"
}
for r in 1 2 3; do
  run r${r}_base bb X=1
  run r${r}_det bt MICS_CUDA_CUDNN_DETERMINISTIC=1
  run r${r}_tree bt X=1
done
grep -h "attention:" /tmp/r1_base.txt /tmp/r1_det.txt /tmp/r1_tree.txt
MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_tree.txt 2>&1
MICS_CUDA_PROFILE=1 /tmp/bb/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_base.txt 2>&1
grep -E "attention|cross|total " $OUT/profile_tree.txt $OUT/profile_base.txt | head -12
echo "A/B done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 150 tests/train_cuda_test --gtest_filter="Layouts/TrainCuda.*:TrainCudaRecompute.*:TrainCudaEval.*:TrainCudaCheckpoint.*" > $OUT/t1.log 2>&1; echo "rc $?" >> $OUT/t1.log )
grep -E "^\[ +(FAILED|PASSED) +\]|^rc|Failure" $OUT/t1.log | head
wait
echo "tests done at $(( $(date +%s) - T0 )) s; $(tail -1 /tmp/llmc_bg.txt)"
for r in 1 2; do
  run mics_r$r bt X=1
  PYTHONUNBUFFERED=1 python3 bench/peers/torch_gpt2.py 16 1 > /tmp/torch_r$r.txt 2>&1
  echo "round $r torch: $(tail -2 /tmp/torch_r$r.txt | tr '\n' ' ')"
  LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_r$r d12:16 > /tmp/llmc_r$r.log 2>&1
  echo "round $r llm.c: $(cat /tmp/llmc_r$r/llmc_summary.txt 2>/dev/null | tr '\n' ' ')"
done
grep -E "MFU|memory" /tmp/mics_r1.txt | head -3
cp /tmp/mics_r1.txt /tmp/torch_r1.txt /tmp/r1_tree.txt $OUT/ 2>/dev/null
echo "side by side done at $(( $(date +%s) - T0 )) s"
for spec in "350m gpt2-350m" "774m gpt2-774m"; do
  set -- $spec
  left=$(( 570 - ($(date +%s) - T0) )); [ $left -lt 40 ] && break
  timeout $left /tmp/bt/mics ${ARGS/--model gpt2-124m --micro-batch 16/--model $2 --micro-batch 8} --log-every 10 --steps 20 > $OUT/mics_$1.txt 2>&1
  echo "$2 B8: $(grep -E '^ *tokens/s|MFU|step time|allocated' $OUT/mics_$1.txt | tr -s ' ' | tr '\n' ' ')"
done
echo "total $(( $(date +%s) - T0 )) s"
