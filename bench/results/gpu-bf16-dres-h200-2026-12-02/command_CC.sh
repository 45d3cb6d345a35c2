# call CC (1 GPU): two experiments in one binary, A/B interleaved with llm.c through bench/gpu_rounds.sh
#   MICS_EXP_CE_SMEM=1   cross-entropy with the row in shared memory (logits cross HBM once each way)
#   MICS_EXP_BF16_DRES=1 the residual stream's gradient kept in bf16 only (LayerNorm bwd 16 -> 10 B/elem)
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics model_cuda_test train_cuda_test || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
t() { # name env... -- args
  local name=$1; shift
  ( cd /tmp/bt && env "$@" > $OUT/$name.log 2>&1; echo "$name rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/$name.log | tr '\n' ' ')"; grep -E "Failure" -A6 $OUT/$name.log | head -24 )
}
t model_cuda_test_ce MICS_EXP_CE_SMEM=1 timeout 120 tests/model_cuda_test
t model_cuda_test_both MICS_EXP_CE_SMEM=1 MICS_EXP_BF16_DRES=1 timeout 120 tests/model_cuda_test --gtest_filter='CudaModel.*:CudaKernels.Layer*'
el "tests done"
P="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10 --steps 8"
for v in base CE_SMEM BF16_DRES; do
  env MICS_EXP_$v=1 MICS_CUDA_PROFILE=1 /tmp/bt/mics $P > /tmp/prof_$v.txt 2>&1
  echo "profile $v: $(grep -E 'total|cross-entropy|layernorm bwd|embedding bwd' /tmp/prof_$v.txt | tr -s ' ' | tr '\n' ';')"
done
tar -czf $OUT/profiles.tgz -C /tmp prof_base.txt prof_CE_SMEM.txt prof_BF16_DRES.txt
# numerics: the tiny model on the embedded synthetic corpus, 300 steps, each way
for v in base BF16_DRES; do
  env MICS_EXP_$v=1 /tmp/bt/mics train --device cuda --model tiny --steps 300 --log-every 100 --out /tmp/tiny_$v > /tmp/tiny_$v.txt 2>&1
  echo "tiny $v: $(grep -E 'final train loss|eval loss' /tmp/tiny_$v.txt | tr -s ' ' | tr '\n' ';')"
done
el "profiles and tiny done"
wait; tail -1 /tmp/llmc_bg.txt
MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=3 LLMC_DIR=$R/.gpuwork/llmc LLMC_FRONTEND=$R/.gpuwork/llmc/cudnn-frontend/include \
  LLMC_WORK=/tmp/llmc-work VARIANTS='-|MICS_EXP_CE_SMEM=1|MICS_EXP_BF16_DRES=1|MICS_EXP_CE_SMEM=1 MICS_EXP_BF16_DRES=1' \
  timeout $(( 570 - ($(date +%s) - T0) )) bash bench/gpu_rounds.sh /tmp/rounds > /tmp/rounds.log 2>&1
echo "gpu_rounds rc $?"; tail -5 /tmp/rounds.log
cp /tmp/rounds/summary.md /tmp/rounds/rounds.tsv $OUT/ 2>/dev/null; cat /tmp/rounds/summary.md
tar -czf $OUT/round_logs.tgz -C /tmp/rounds --exclude=data . /tmp/rounds.log 2>/dev/null
el total
