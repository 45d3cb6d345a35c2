# call B: GPT-2 350M and 774M at B=8: mics, PyTorch compile, llm.c (built in the background)
set -u
export NCCL_NVLS_ENABLE=0
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT/llmc_build_only none > $OUT/llmc_bg.txt 2>&1 ) &
t0=$(date +%s)
# the 124M rows ran in call A; here the tests and the 124M runs are skipped
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb SKIP_TESTS=1 STEPS=10 LARGE=1 BUILD=/tmp/b bash bench/gpu.sh $OUT
echo "gpu.sh took $(( $(date +%s)-t0 )) s"
wait; tail -3 $OUT/llmc_bg.txt
LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT d24:8 d36:8
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
echo "total $(( $(date +%s)-t0 )) s"
