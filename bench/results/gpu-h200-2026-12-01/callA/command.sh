# call A: llm.c build in the background; mics build + CUDA tests + 124M (mics, profile, torch); llm.c d12
set -u
export NCCL_NVLS_ENABLE=0
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
( t0=$(date +%s); LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT/llmc_build_only none > $OUT/llmc_bg.txt 2>&1; echo "llmc build $(( $(date +%s)-t0 )) s" >> $OUT/llmc_bg.txt ) &
t0=$(date +%s)
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb STEPS=30 BUILD=/tmp/b bash bench/gpu.sh $OUT
echo "gpu.sh took $(( $(date +%s)-t0 )) s"
wait
cat $OUT/llmc_bg.txt | tail -5
LLMC_WORK=/tmp/llmc-work bash bench/peers/llmc.sh $R/.gpuwork/llmc $R/.gpuwork/llmc/cudnn-frontend/include $D $OUT d12:16
echo "total $(( $(date +%s)-t0 )) s"
