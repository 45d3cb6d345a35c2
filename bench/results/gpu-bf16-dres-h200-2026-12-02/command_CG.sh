# call CG (1 GPU): CUDA graphs for one GPU's micro-batches (MICS_CUDA_GRAPHS, default 1): the CUDA tests, then
# graphs on/off interleaved at B=16, 4 and 1 (bench/gpu_rounds.sh, mics only), and the tiny model's eval loss each way
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics model_cuda_test train_cuda_test || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
t() { local name=$1; shift
  ( cd /tmp/bt && env "$@" > $OUT/$name.log 2>&1; echo "$name rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/$name.log | tr '\n' ' ')"; grep -E "Failure" -A6 $OUT/$name.log | head -30 )
}
t model_cuda_test timeout 100 tests/model_cuda_test
grep -E "CUDA graphs:" $OUT/model_cuda_test.log | head -20
el "model_cuda_test done"
for b in 16 4 1; do
  MICS=/tmp/bt/mics DATA=$D/rand_train.bin ROUNDS=2 BATCH=$b VARIANTS='-|MICS_CUDA_GRAPHS=0' timeout 90 bash bench/gpu_rounds.sh /tmp/g$b > /tmp/g$b.log 2>&1
  echo "B=$b rc $?"; grep -E "^\| mics|/ mics" /tmp/g$b/summary.md; cp /tmp/g$b/summary.md $OUT/summary_b$b.md 2>/dev/null
  grep -E "CUDA graphs" /tmp/g$b/mics_r1_v0.txt /tmp/g$b/mics_r1_v1.txt
done
el "rounds done"
for v in 1 0; do
  MICS_CUDA_GRAPHS=$v /tmp/bt/mics train --device cuda --model tiny --steps 300 --log-every 100 --out /tmp/tiny_$v > /tmp/tiny_$v.txt 2>&1
  echo "tiny graphs=$v: $(grep -E 'final train loss|eval loss|tokens/s|CUDA graphs' /tmp/tiny_$v.txt | tr -s ' ' | tr '\n' ';')"
done
el "tiny done"
left=$(( 330 - ($(date +%s) - T0) ))
[ $left -gt 70 ] && t train_cuda_test timeout $left tests/train_cuda_test
tar -czf $OUT/logs.tgz -C /tmp --exclude='*/data' g16 g4 g1 tiny_1.txt tiny_0.txt 2>/dev/null
el total
