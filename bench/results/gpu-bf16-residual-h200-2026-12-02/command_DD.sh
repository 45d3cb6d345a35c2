# call DD (1 GPU): the side by side at this tree (bf16 residual stream by default) through bench/gpu_rounds.sh: GPT-2 124M B16 (4 rounds with llm.c,
# then torch.compile), GPT-2 350M and 774M at B8 (one round each: mics, llm.c, torch.compile)
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
wait; tail -1 /tmp/llmc_bg.txt
common="MICS=/tmp/bt/mics DATA=$D/rand_train.bin LLMC_DIR=$R/.gpuwork/llmc LLMC_FRONTEND=$R/.gpuwork/llmc/cudnn-frontend/include LLMC_WORK=/tmp/llmc-work TORCH=1"
env $common ROUNDS=4 timeout 250 bash bench/gpu_rounds.sh /tmp/r124 > /tmp/r124.log 2>&1; echo "124M rc $?"
cat /tmp/r124/summary.md
el "124M done"
for m in 350m 774m; do
  left=$(( 565 - ($(date +%s) - T0) ))
  [ $left -gt 60 ] || { echo "no time left for $m"; continue; }
  env $common ROUNDS=1 MODEL=gpt2-$m BATCH=8 timeout $left bash bench/gpu_rounds.sh /tmp/r$m > /tmp/r$m.log 2>&1; echo "$m rc $?"
  cat /tmp/r$m/summary.md; grep -E "model flops|device memory" /tmp/r$m/mics_r1_v0.txt
  el "$m done"
done
for r in r124 r350m r774m; do cp /tmp/$r/summary.md $OUT/summary_$r.md 2>/dev/null; done
tar -czf $OUT/round_logs.tgz -C /tmp --exclude='*/data' --exclude='*/llmc-work' r124 r350m r774m r124.log r350m.log r774m.log 2>/dev/null
el total
