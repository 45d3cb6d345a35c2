# call Y (1 GPU): final check of the session's last commit: every GPU test, and the per-kind profile with GEMM autotuning
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
for t in model_cuda_test gpu_comm_test train_cuda_test; do
  ( cd /tmp/bt && timeout 400 tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?" >> $OUT/$t.log )
  grep -E "^\[ +(FAILED|PASSED|SKIPPED) +\]| rc |Failure" $OUT/$t.log | head -12
done
echo "tests done at $(( $(date +%s) - T0 )) s"
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
MICS_CUDA_PROFILE=1 /tmp/bt/mics train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10 --model gpt2-124m --micro-batch 16 --steps 12 > $OUT/profile_tune8.txt 2>&1
sed -n '/kernel time per step/,$p' $OUT/profile_tune8.txt
grep -E "^  (tokens/s|step time) " $OUT/profile_tune8.txt
echo "total $(( $(date +%s) - T0 )) s"
