# call DC (1 GPU): the deferred update's test again; interleaved A/B: the deferred update off, its grid capped
# (MICS_EXP_ADAMW_BLOCKS), the main stream at the greatest priority (MICS_EXP_MAIN_PRIO), 16 cuBLASLt candidates
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics model_cuda_test || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
( cd /tmp/bt && timeout 60 tests/model_cuda_test --gtest_filter='CudaModel.UpdateInTheNext*' > $OUT/deferred_test.log 2>&1; echo "deferred test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]|deferred update' $OUT/deferred_test.log | tr '\n' ' ')"; grep -E "Failure" -A6 $OUT/deferred_test.log | head -20 )
el "test done"
MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=3 VARIANTS='-|MICS_CUDA_OVERLAP_ADAMW=0|MICS_EXP_ADAMW_BLOCKS=264|MICS_EXP_ADAMW_BLOCKS=66|MICS_EXP_MAIN_PRIO=1|MICS_CUDA_GEMM_TUNE=16' timeout 300 bash bench/gpu_rounds.sh /tmp/ab > /tmp/ab.log 2>&1
echo "rounds rc $?"; cat /tmp/ab/summary.md; cp /tmp/ab/summary.md $OUT/summary_ab.md 2>/dev/null
el "rounds done"
tar -czf $OUT/logs.tgz -C /tmp --exclude='*/data' ab ab.log 2>/dev/null
el total
