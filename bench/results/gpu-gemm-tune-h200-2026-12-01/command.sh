# call X (1 GPU): GEMM autotuning: correctness, then GPT-2 124M B16 interleaved with and without
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
( cd /tmp/bt && timeout 150 tests/model_cuda_test --gtest_filter="CudaModel.*" > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]|autotuned| rc |Failure" $OUT/model_cuda_test.log | head -20
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
shared=(--device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10 --model gpt2-124m --micro-batch 16 --steps 40)
for round in 1 2 3; do
  for tune in 0 8 16; do
    MICS_CUDA_GEMM_TUNE=$tune /tmp/bt/mics train "${shared[@]}" > $OUT/r${round}_tune$tune.txt 2>&1
    echo "round $round tune $tune: $(grep -E '^  (tokens/s|step time) ' $OUT/r${round}_tune$tune.txt | sed 's/  */ /g' | tr '\n' ';')"
  done
done
for tune in 0 8; do
  MICS_CUDA_GEMM_TUNE=$tune MICS_CUDA_PROFILE=1 /tmp/bt/mics train "${shared[@]}" --steps 10 > $OUT/profile_tune$tune.txt 2>&1
  echo "== profile tune $tune"; sed -n '/kernel time per step/,$p' $OUT/profile_tune$tune.txt | grep -i "gemm\|kernel time"
done
echo "total $(( $(date +%s) - T0 )) s"
