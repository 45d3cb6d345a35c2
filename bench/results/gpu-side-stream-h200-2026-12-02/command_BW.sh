# call BW (1 GPU): the final tree's tests (second stream on), then experiments A/B'd in one binary:
# MICS_EXP_SIDE_COLSUM (dfch/dqkv bias sums on the side stream), MICS_EXP_SIDE_LN (LayerNorm
# backward split: dx on the main stream, parameter sums + dx column sums on the side),
# MICS_EXP_LN_EARLY_DX (the split dx kernel loads dx with dout and x)
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test train_cuda_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
( cd /tmp/bt && timeout 150 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/model_cuda_test.log | head -20 )
( cd /tmp/bt && timeout 200 tests/train_cuda_test > $OUT/train_cuda_test.log 2>&1; echo "train_cuda_test rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/train_cuda_test.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/train_cuda_test.log | head -20 )
for e in "MICS_EXP_SIDE_LN=1" "MICS_EXP_SIDE_LN=1 MICS_EXP_SIDE_COLSUM=1 MICS_EXP_LN_EARLY_DX=1"; do
  ( cd /tmp/bt && env $e timeout 60 tests/model_cuda_test --gtest_filter='CudaModel.*' > /tmp/m.log 2>&1; echo "model_cuda_test CudaModel.* [$e] rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' /tmp/m.log | tr '\n' ' ')"; grep -E "Failure" -A4 /tmp/m.log | head -12 )
done
echo "tests done at $(( $(date +%s) - T0 )) s"
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
# standalone kernel times (ncu serializes): the fused LayerNorm backward against the split pair
ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k regex:"layernorm_backward_fused" --launch-skip 25 --launch-count 4 /tmp/bt/mics $ARGS --steps 3 > /tmp/ncu0.csv 2>&1
MICS_EXP_SIDE_LN=1 ncu --clock-control none --csv --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed -k regex:"layernorm_backward_dx|layernorm_param_sums" --launch-skip 50 --launch-count 8 /tmp/bt/mics $ARGS --steps 3 > /tmp/ncu1.csv 2>&1
MICS_EXP_SIDE_LN=1 MICS_EXP_LN_EARLY_DX=1 ncu --clock-control none --csv --metrics gpu__time_duration.sum -k regex:"layernorm_backward_dx" --launch-skip 25 --launch-count 4 /tmp/bt/mics $ARGS --steps 3 > /tmp/ncu2.csv 2>&1
for f in /tmp/ncu0.csv /tmp/ncu1.csv /tmp/ncu2.csv; do echo "== $f"; grep -E '^"[0-9]' $f | awk -F'","' '{print $5" | "$(NF-2)" | "$NF}' | sed -E 's/\(.*\)//' | cut -c1-150; done
cp /tmp/ncu1.csv $OUT/ncu_side_ln.csv
echo "ncu done at $(( $(date +%s) - T0 )) s"
V0="MICS_EXP_SIDE_LN=0"
V1="MICS_EXP_SIDE_COLSUM=1"
V2="MICS_EXP_SIDE_LN=1"
V3="MICS_EXP_SIDE_LN=1 MICS_EXP_SIDE_COLSUM=1"
V4="MICS_EXP_SIDE_LN=1 MICS_EXP_SIDE_COLSUM=1 MICS_EXP_LN_EARLY_DX=1"
for r in 1 2 3; do
  for v in "$V0" "$V1" "$V2" "$V3" "$V4"; do
    env $v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics.txt 2>&1
    echo "round $r [$v]: $(grep -E '^ *tokens/s' /tmp/mics.txt | head -1 | tr -s ' ') $(grep -E 'final train|eval loss' /tmp/mics.txt | head -2 | tr -s ' ' | tr '\n' ' ')"
  done
  echo "at $(( $(date +%s) - T0 )) s"
done
echo "total $(( $(date +%s) - T0 )) s"
