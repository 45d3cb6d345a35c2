# call DB (1 GPU): the deferred AdamW update (MICS_CUDA_OVERLAP_ADAMW) and the experiment MICS_EXP_LN3 (LayerNorm
# backward re-reading its staged row, three blocks per SM; =2 with dx loaded early): tests, then interleaved A/B
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
grep -E "deferred update" $OUT/model_cuda_test.log
el "model_cuda_test done"
for e in 1 2; do
  t ln3_$e MICS_EXP_LN3=$e timeout 60 tests/model_cuda_test --gtest_filter='CudaKernels.LayerNorm*:CudaModel.LossAndGradientsMatchCpu'
done
el "ln3 tests done"
MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=3 VARIANTS='-|MICS_CUDA_OVERLAP_ADAMW=0|MICS_EXP_LN3=1|MICS_EXP_LN3=2' timeout 240 bash bench/gpu_rounds.sh /tmp/ab > /tmp/ab.log 2>&1
echo "rounds rc $?"; cat /tmp/ab/summary.md; cp /tmp/ab/summary.md $OUT/summary_ab.md 2>/dev/null
grep -E "optimizer|overlap|CUDA graphs" /tmp/ab/mics_r1_v0.txt | head -5
el "rounds done"
for e in 0 1 2; do
  MICS_EXP_LN3=$e MICS_CUDA_PROFILE=1 timeout 60 /tmp/bt/mics train --device cuda --model gpt2-124m --data $D/rand_train.bin --micro-batch 16 --steps 12 --log-every 100 --out /tmp/prof_$e > $OUT/prof_ln3_$e.txt 2>&1
  echo "profile LN3=$e rc $?: $(grep -E 'layernorm bwd|bias grads|total' $OUT/prof_ln3_$e.txt | tr -s ' ' | tr '\n' ';')"
done
el "profiles done"
left=$(( 540 - ($(date +%s) - T0) ))
[ $left -gt 60 ] && t train_cuda_test timeout $left tests/train_cuda_test
tar -czf $OUT/logs.tgz -C /tmp --exclude='*/data' ab ab.log 2>/dev/null
el total
