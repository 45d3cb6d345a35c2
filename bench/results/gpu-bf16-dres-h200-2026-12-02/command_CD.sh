# call CD (1 GPU): the committed bf16 residual gradient checked (model_cuda_test, train_cuda_test), bench/gpu.sh end to
# end (tests, mics, profile, torch.compile, llm.c), then bench/gpu_rounds.sh: default (bf16) | fp32 | MICS_EXP_LN_EARLY_DX=1
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D /tmp/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
export FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb
JOBS=14 bash bench/gpu_build.sh /tmp/bt mics model_cuda_test train_cuda_test || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
( cd /tmp/bt && timeout 200 tests/train_cuda_test > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/train_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A6 $OUT/train_cuda_test.log | head -24 )
el "train_cuda_test done"
wait; tail -1 /tmp/llmc_bg.txt
el "llm.c built"
# bench/gpu.sh end to end (its build step reuses /tmp/bt; llm.c's copy reused from LLMC_WORK)
BUILD=/tmp/bt LLMC_WORK=/tmp/llmc-work LLMC_DIR=$R/.gpuwork/llmc LLMC_FRONTEND=$R/.gpuwork/llmc/cudnn-frontend/include \
  timeout 300 bash bench/gpu.sh /tmp/gpush > /tmp/gpush.log 2>&1
echo "bench/gpu.sh rc $?"; grep -E "^\[ +(FAILED|PASSED)|worst|attention:" /tmp/gpush/tests.txt | head -30; cat /tmp/gpush/summary.txt
sed -n '/kernel time per step/,$p' /tmp/gpush/mics_profile.txt
tar -czf $OUT/gpush.tgz -C /tmp --exclude=gpush/llmc_build.log gpush gpush.log  # (as run: the --exclude after the names, ignored with an error)
el "gpu.sh done"
left=$(( 560 - ($(date +%s) - T0) ))
MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=3 LLMC_DIR=$R/.gpuwork/llmc LLMC_FRONTEND=$R/.gpuwork/llmc/cudnn-frontend/include \
  LLMC_WORK=/tmp/llmc-work VARIANTS='-|MICS_CUDA_RESIDUAL_GRAD=fp32|MICS_EXP_LN_EARLY_DX=1' \
  timeout $left bash bench/gpu_rounds.sh /tmp/rounds > /tmp/rounds.log 2>&1
echo "gpu_rounds rc $?"; tail -3 /tmp/rounds.log
cp /tmp/rounds/summary.md /tmp/rounds/rounds.tsv $OUT/ 2>/dev/null; cat /tmp/rounds/summary.md
tar -czf $OUT/round_logs.tgz -C /tmp --exclude=rounds/data --exclude=rounds/llmc-work rounds rounds.log 2>/dev/null
el total
