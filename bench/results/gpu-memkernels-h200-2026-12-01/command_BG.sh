# call BG (1 GPU): bench/gpu.sh at HEAD with LARGE=1 (model_cuda_test, 124M/350M/774M mics + PyTorch
# torch.compile), then llm.c d12/d24/d36 (built in the background meanwhile), then train_cuda_test
set -u
export NCCL_NVLS_ENABLE=0
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT/llmc_build_only none > /tmp/llmc_bg.txt 2>&1 ) &
t0=$(date +%s)
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb STEPS=30 LARGE=1 JOBS=14 BUILD=/tmp/b bash bench/gpu.sh $OUT
echo "gpu.sh took $(( $(date +%s)-t0 )) s"
wait; tail -1 /tmp/llmc_bg.txt
LLMC_WORK=/tmp/llmc-work timeout $(( 520 - ($(date +%s)-t0) )) bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT d12:16 d24:8 d36:8
cat $OUT/llmc_summary.txt 2>/dev/null
echo "llm.c done at $(( $(date +%s)-t0 )) s"
left=$(( 585 - ($(date +%s)-t0) ))
if [ $left -gt 40 ]; then
  ninja -C /tmp/b -j14 train_cuda_test > /tmp/b_train.log 2>&1 && ( cd /tmp/b && timeout $(( left - 25 )) tests/train_cuda_test > /tmp/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/train_cuda_test.log | tr '\n' ' ')" )
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
rm -rf $OUT/llmc_build_only
ls $OUT
echo "total $(( $(date +%s)-t0 )) s"
