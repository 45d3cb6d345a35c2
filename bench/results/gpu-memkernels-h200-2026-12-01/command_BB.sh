# call BB (1 GPU): GEMM probe, every GPT-2 124M shape in mics' and alternative configurations
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
nvcc -O2 -arch=sm_90 -o /tmp/gemm_probe .gpuwork/gemm_probe.cu -lcublasLt || exit 1
/tmp/gemm_probe | tee $OUT/probe.txt
echo second pass
/tmp/gemm_probe > $OUT/probe2.txt; paste <(cut -c1-34 $OUT/probe2.txt) <(grep -o 'best *[0-9.]* us' $OUT/probe2.txt)
