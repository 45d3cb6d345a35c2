# call C: 1-GPU smoke test of bench/multigpu.sh (issue 10 tooling): mics and FSDP 1.3B rows, NCCL bench
set -u
export NCCL_NVLS_ENABLE=0
R=$PWD
t0=$(date +%s)
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
if [ ! -x /tmp/b/mics ]; then
  cmake -S . -B /tmp/b -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > $OUT/build.log 2>&1
fi
ninja -C /tmp/b -j16 mics >> $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "build $(( $(date +%s)-t0 )) s"
timeout 480 bash bench/multigpu.sh /tmp/b $OUT/mg --max-gpus auto --models 1.3b --steps 6 2>&1 | tail -40
echo "total $(( $(date +%s)-t0 )) s"
cat $OUT/mg/summary.md 2>/dev/null | head -60
