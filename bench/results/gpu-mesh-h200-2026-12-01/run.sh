# call S (1 GPU): the GPU mesh stages' speed beside the one-GPU trainer (ranks share the GPU)
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/configure.log 2>&1
ninja -C /tmp/bt -j16 mics > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
M="--model L12H12C768V50304T1024 --micro-batch 4 --seq-len 1024 --steps 5 --samples 0 --eval-batches 1 --log-every 1"
cd /tmp
run() { local tag=$1; shift; echo "== $tag: $*"; timeout 150 /tmp/bt/mics train $M "$@" > $OUT/$tag.log 2>&1; echo "rc $?"; grep -E "step time|tokens/s|mesh:|device cuda|step +[0-9]" $OUT/$tag.log | head -14; }
run gpu1 --device cuda --grad-accum 4
run t2 --device cuda -n 2 --tensor-parallel 2 --grad-accum 4
run s2 --device cuda -n 2 --pipeline-parallel 2 --grad-accum 4
echo "total $(( $(date +%s) - T0 )) s"
