# call DE (1 GPU): the final tree's CUDA tests (model_cuda_test, train_cuda_test, gpu_comm_test)
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics model_cuda_test train_cuda_test gpu_comm_test comm_worker || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
t() { local name=$1; shift
  ( cd /tmp/bt && env "$@" > $OUT/$name.log 2>&1; echo "$name rc $?: $(grep -E '^\[ +(FAILED|PASSED|SKIPPED) +\]' $OUT/$name.log | tr '\n' ' ')"; grep -E "Failure" -A6 $OUT/$name.log | head -30 )
}
t model_cuda_test timeout 120 tests/model_cuda_test
grep -E "\] loss cpu|CUDA graphs:" $OUT/model_cuda_test.log | head -40
t gpu_comm_test timeout 120 tests/gpu_comm_test
left=$(( 330 - ($(date +%s) - T0) ))
t train_cuda_test timeout $left tests/train_cuda_test
el total
