# call AW (1 GPU): bench/gpu.sh at HEAD with LARGE=1 (tests, 124M/350M/774M mics + PyTorch
# torch.compile), then llm.c d12/d24/d36 (built in the background meanwhile)
set -u
export NCCL_NVLS_ENABLE=0
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT/llmc_build_only none > $OUT/llmc_bg.txt 2>&1 ) &
t0=$(date +%s)
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb STEPS=30 LARGE=1 JOBS=14 BUILD=/tmp/b bash bench/gpu.sh $OUT
echo "gpu.sh took $(( $(date +%s)-t0 )) s"
wait; tail -1 $OUT/llmc_bg.txt
LLMC_WORK=/tmp/llmc-work timeout $(( 585 - ($(date +%s)-t0) )) bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT d12:16 d24:8 d36:8
cat $OUT/llmc_summary.txt 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
echo "total $(( $(date +%s)-t0 )) s"
