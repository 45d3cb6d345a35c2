# call AY (1 GPU): cuDNN opened with dlopen (HEAD): every CUDA test binary, and one GPT-2 124M run
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test train_cuda_test gpu_comm_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
cd /tmp/bt
for t in model_cuda_test gpu_comm_test train_cuda_test; do
  timeout 240 tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/$t.log | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]|Failure" $OUT/$t.log | head -5
  echo "  at $(( $(date +%s) - T0 )) s"
done
grep -E "^\[cuDNN" $OUT/model_cuda_test.log | head -4
cd $R; /tmp/bt/mics doctor 2>&1 | grep -i "cudnn  "
/tmp/bt/mics train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10 --steps 30 > $OUT/mics_124m.txt 2>&1
grep -E "attention:|^ *tokens/s|step time|eval loss" $OUT/mics_124m.txt
echo "total $(( $(date +%s) - T0 )) s"
