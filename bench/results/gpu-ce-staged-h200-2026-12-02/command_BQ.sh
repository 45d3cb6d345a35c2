# call BQ (1 GPU): LayerNorm backward with x, dout and dx all staged one row ahead
# (MICS_EXP_LN_STAGED=1) against the current kernel; tests with both; profiles; 3 interleaved rounds;
# nsys kernel summary if present
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
D=/tmp/mics-gpu-data; mkdir -p $D; python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
cmake -S . -B /tmp/bt -G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F > /tmp/configure.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > /tmp/build.log 2>&1 || { grep -E "error|FAILED" /tmp/build.log | head -20; exit 1; }
echo "build done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
( cd /tmp/bt && for v in 0 1; do MICS_EXP_LN_STAGED=$v timeout 150 tests/model_cuda_test > $OUT/model_cuda_test_ln$v.log 2>&1; echo "model_cuda_test ln$v rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test_ln$v.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/model_cuda_test_ln$v.log | head -20; done )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for rep in 1 2; do for v in 0 1; do
  MICS_EXP_LN_STAGED=$v MICS_CUDA_PROFILE=1 /tmp/bt/mics $ARGS --steps 8 > /tmp/p.txt 2>&1; cp /tmp/p.txt $OUT/profile_ln$v.txt
  echo "profile ln $v: $(grep -E 'layernorm bwd|bias grads|total|final train' /tmp/p.txt | tr -s ' ' | tr '\n' ' ')"
done; done
for r in 1 2 3; do
  for v in 0 1; do
    MICS_EXP_LN_STAGED=$v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r$r.txt 2>&1
    echo "round $r mics ln $v: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|final train' /tmp/mics_r$r.txt | head -2 | tr -s ' ' | cut -c1-60 | tr '\n' ' ')"
  done
done
echo "rounds done at $(( $(date +%s) - T0 )) s"
if which nsys > /dev/null 2>&1; then
  MICS_EXP_LN_STAGED=1 timeout 150 nsys profile -o /tmp/nsys_ln1 --force-overwrite true -t cuda /tmp/bt/mics $ARGS --steps 10 > /tmp/nsys_run.txt 2>&1
  timeout 100 nsys stats -r cuda_gpu_kern_sum -f csv -o /tmp/kern /tmp/nsys_ln1.nsys-rep > /dev/null 2>&1
  cp /tmp/kern*.csv $OUT/nsys_kern_sum.csv 2>/dev/null
  head -40 /tmp/kern*.csv | cut -c1-220
  timeout 100 nsys stats -r cuda_gpu_trace -f csv -o /tmp/trace /tmp/nsys_ln1.nsys-rep > /dev/null 2>&1
  python3 - <<'PY'
import csv,glob
f=glob.glob('/tmp/trace*.csv')
if f:
    rows=list(csv.DictReader(open(f[0])))
    ks=[(int(r['Start (ns)']),int(r['Duration (ns)']),r['Name']) for r in rows if r.get('Name') and 'memcpy' not in r['Name'].lower() and 'memset' not in r['Name'].lower()]
    ks.sort()
    # last 3 steps: take the final 40% of kernels
    n=len(ks); tail=ks[int(n*0.6):]
    busy=sum(d for _,d,_ in tail); span=tail[-1][0]+tail[-1][1]-tail[0][0]
    gaps=[tail[i+1][0]-(tail[i][0]+tail[i][1]) for i in range(len(tail)-1)]
    gp=[g for g in gaps if g>0]
    print(f"kernels {len(tail)} span {span/1e6:.2f} ms busy {busy/1e6:.2f} ms gaps>0 {len(gp)} sum {sum(gp)/1e6:.3f} ms median {sorted(gp)[len(gp)//2] if gp else 0} ns; overlaps {sum(1 for g in gaps if g<0)}")
PY
else echo "no nsys"; fi
echo "total $(( $(date +%s) - T0 )) s"
