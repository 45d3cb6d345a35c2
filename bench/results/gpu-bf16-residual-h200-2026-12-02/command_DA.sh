# call DA (1 GPU): the bf16 residual stream (MICS_CUDA_RESIDUAL=bf16) checked (model_cuda_test), A/B against fp32
# interleaved (bench/gpu_rounds.sh, mics only), a profile of each, the loss both ways (tiny 300 steps, GPT-2 124M
# 200 steps on the default corpus), then train_cuda_test
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics model_cuda_test train_cuda_test || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
t() { local name=$1; shift
  ( cd /tmp/bt && env "$@" > $OUT/$name.log 2>&1; echo "$name rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/$name.log | tr '\n' ' ')"; grep -E "Failure" -A6 $OUT/$name.log | head -40 )
}
t model_cuda_test timeout 150 tests/model_cuda_test
grep -E "worst unit|CUDA graphs:" $OUT/model_cuda_test.log | grep -i "residual" | head -20
el "model_cuda_test done"
MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=3 VARIANTS='-|MICS_CUDA_RESIDUAL=bf16' timeout 200 bash bench/gpu_rounds.sh /tmp/ab > /tmp/ab.log 2>&1
echo "rounds rc $?"; cat /tmp/ab/summary.md; cp /tmp/ab/summary.md $OUT/summary_ab.md 2>/dev/null
el "rounds done"
for v in fp32 bf16; do
  MICS_CUDA_RESIDUAL=$v MICS_CUDA_PROFILE=1 timeout 60 /tmp/bt/mics train --device cuda --model gpt2-124m --data $D/rand_train.bin --micro-batch 16 --steps 12 --log-every 100 --out /tmp/prof_$v > $OUT/prof_$v.txt 2>&1
  echo "profile $v rc $?"; sed -n '/kernel time per step/,$p' $OUT/prof_$v.txt | head -30
done
el "profiles done"
for v in fp32 bf16; do
  MICS_CUDA_RESIDUAL=$v timeout 60 /tmp/bt/mics train --device cuda --model tiny --steps 300 --log-every 100 --out /tmp/tiny_$v > $OUT/tiny_$v.txt 2>&1
  echo "tiny $v: $(grep -E 'final train loss|eval loss|tokens/s' $OUT/tiny_$v.txt | tr -s ' ' | tr '\n' ';')"
  MICS_CUDA_RESIDUAL=$v timeout 90 /tmp/bt/mics train --device cuda --model gpt2-124m --micro-batch 16 --steps 200 --log-every 50 --out /tmp/g124_$v > $OUT/g124_$v.txt 2>&1
  echo "124M $v: $(grep -E 'step +(50|100|150|200)|final train loss|eval loss|tokens/s' $OUT/g124_$v.txt | tr -s ' ' | tr '\n' ';')"
done
el "losses done"
left=$(( 560 - ($(date +%s) - T0) ))
[ $left -gt 60 ] && t train_cuda_test timeout $left tests/train_cuda_test
tar -czf $OUT/logs.tgz -C /tmp --exclude='*/data' ab ab.log 2>/dev/null
el total
