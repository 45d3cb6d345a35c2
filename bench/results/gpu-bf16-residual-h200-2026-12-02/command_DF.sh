# call DF (1 GPU): cuDNN's other SDPA engine configs (experiment MICS_EXP_CUDNN_HEUR / MICS_EXP_CUDNN_PICK), A/B
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
for v in "-" "MICS_EXP_CUDNN_HEUR=B" "MICS_EXP_CUDNN_PICK=1"; do
  env $( [ "$v" = - ] || echo $v ) timeout 40 /tmp/bt/mics train --device cuda --model gpt2-124m --data $D/rand_train.bin --micro-batch 16 --steps 8 --log-every 100 --eval-batches 1 --out /tmp/probe > /tmp/probe.txt 2>&1
  cp /tmp/probe.txt $OUT/probe_${v%%=*}_${v##*=}.txt; echo "$v: $(grep -E '^\[exp\]' /tmp/probe.txt | sort | uniq | tr '\n' ';') | $(grep -E 'attention:|tokens/s' /tmp/probe.txt | tr -s ' ' | tr '\n' ';')"
done
el "probes done"
MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=2 VARIANTS='-|MICS_EXP_CUDNN_HEUR=B|MICS_EXP_CUDNN_PICK=1' timeout 100 bash bench/gpu_rounds.sh /tmp/ab > /tmp/ab.log 2>&1
echo "rounds rc $?"; cat /tmp/ab/summary.md; cp /tmp/ab/summary.md $OUT/summary_ab.md 2>/dev/null
el total
