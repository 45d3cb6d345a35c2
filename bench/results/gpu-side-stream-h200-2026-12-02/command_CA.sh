# call CA (1 GPU): GPT-2 350M and 774M at B=8 (the anchors' batch), mics at HEAD (second stream,
# bias sums on it) beside PyTorch torch.compile, as bench/gpu.sh LARGE=1 runs them
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; [ -d $F ] || dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
[ -f /tmp/bt/build.ninja ] || cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
SH="--device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10"
for spec in "350m gpt2-350m" "774m gpt2-774m"; do
  read -r name preset <<< "$spec"
  timeout 90 /tmp/bt/mics train $SH --model $preset --micro-batch 8 --steps 20 > $OUT/mics_$name.txt 2>&1
  echo "mics $name B8: $(grep -E '^  (tokens/s|step time|model flops|device memory) ' $OUT/mics_$name.txt | tr -s ' ' | tr '\n' ' ')"
done
echo "at $(( $(date +%s) - T0 )) s"
for spec in "350m 24 16 1024" "774m 36 20 1280"; do
  read -r name layers heads width <<< "$spec"
  PYTHONUNBUFFERED=1 timeout 170 python3 bench/peers/torch_gpt2.py 8 1 $layers $heads $width 2>&1 | tail -1 > $OUT/torch_$name.txt
  echo "torch $name B8: $(cat $OUT/torch_$name.txt)"
  echo "at $(( $(date +%s) - T0 )) s"
done
echo "total $(( $(date +%s) - T0 )) s"
