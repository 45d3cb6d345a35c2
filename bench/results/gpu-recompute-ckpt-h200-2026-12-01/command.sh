# call W (1 GPU): one-GPU recompute + checkpoints: tests, then speed/memory with and without recompute, checkpoint stalls
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test train_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 150 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]|recompute| rc |Failure" $OUT/model_cuda_test.log | head -20
( cd /tmp/bt && timeout 300 tests/train_cuda_test --gtest_filter="*Recompute*:*Checkpoint*:*FabricFallback*:*TrainCudaMesh*" > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?" >> $OUT/train_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]|worst relative| rc |Failure|ckpt_" $OUT/train_cuda_test.log | head -40
echo "tests done at $(( $(date +%s) - T0 )) s"
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
shared=(--device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10)
run() {  # tag, args...
  local tag=$1; shift
  /tmp/bt/mics train "${shared[@]}" "$@" --metrics $OUT/$tag.jsonl > $OUT/$tag.txt 2>&1
  echo "$tag rc $?: $(grep -E '^  (tokens/s|step time|device memory) ' $OUT/$tag.txt | sed 's/  */ /g' | tr '\n' ';')"
}
run m124_b16 --model gpt2-124m --micro-batch 16 --steps 30
run m124_b16_recompute --model gpt2-124m --micro-batch 16 --steps 30 --recompute
run m124_b32_recompute --model gpt2-124m --micro-batch 32 --steps 30 --recompute
run m774_b8 --model gpt2-774m --micro-batch 8 --steps 20
run m774_b8_recompute --model gpt2-774m --micro-batch 8 --steps 20 --recompute
run m774_b32_recompute --model gpt2-774m --micro-batch 32 --steps 12 --recompute
rm -rf /tmp/ck
run m124_ckpt --model gpt2-124m --micro-batch 16 --steps 30 --ckpt-every 10 --out /tmp/ck
python3 - <<PY
import json
for l in open("$OUT/m124_ckpt.jsonl"):
    o=json.loads(l)
    if o.get("event")=="step" and o["step"]%10 in (0,1): print("step", o["step"], "step_ms %.1f"%o["step_ms"], "checkpoint_ms %.1f"%o.get("checkpoint_ms",0))
PY
du -sh /tmp/ck/step-00000030; ls /tmp/ck
run m124_resume --model gpt2-124m --micro-batch 16 --steps 40 --resume auto --out /tmp/ck
grep -E "loaded|continuing" $OUT/m124_resume.txt | head -3
echo "total $(( $(date +%s) - T0 )) s"
