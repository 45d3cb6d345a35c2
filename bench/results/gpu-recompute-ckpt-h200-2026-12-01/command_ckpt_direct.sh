# call AA (1 GPU): checkpoints copied from the device straight into the snapshot: tests and the GPT-2 124M pause
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics train_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 300 tests/train_cuda_test --gtest_filter="*Checkpoint*:*Recompute*:*FabricFallback*" > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?" >> $OUT/train_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]|worst relative| rc |Failure|ckpt_|mesh checkpoint" $OUT/train_cuda_test.log | head -40
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
rm -rf /tmp/ck
/tmp/bt/mics train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10 --model gpt2-124m --micro-batch 16 --steps 30 --ckpt-every 10 --out /tmp/ck --metrics $OUT/ckpt.jsonl > $OUT/ckpt.txt 2>&1
echo "ckpt run rc $?: $(grep -E '^  (tokens/s|step time) ' $OUT/ckpt.txt | sed 's/  */ /g' | tr '\n' ';')"
python3 - <<PY
import json
for l in open("$OUT/ckpt.jsonl"):
    o=json.loads(l)
    if o.get("event")=="step" and o["step"]%10 in (0,1): print("step", o["step"], "step_ms %.1f"%o["step_ms"], "checkpoint_ms %.1f"%o.get("checkpoint_ms",0))
PY
/tmp/bt/mics train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10 --model gpt2-124m --micro-batch 16 --steps 40 --resume auto --out /tmp/ck > $OUT/resume.txt 2>&1
echo "resume rc $?: $(grep -E 'loaded|^  tokens/s' $OUT/resume.txt | tr '\n' ';')"
echo "total $(( $(date +%s) - T0 )) s"
