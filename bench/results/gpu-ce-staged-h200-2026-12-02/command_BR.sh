# call BR (1 GPU): programmatic dependent launch on mics' own kernels (MICS_EXP_PDL=1) against
# plain launches: tests with both, 4 interleaved rounds; ncu kernel durations of one step (gaps)
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
( cd /tmp/bt && for v in 0 1; do MICS_EXP_PDL=$v timeout 150 tests/model_cuda_test > $OUT/model_cuda_test_pdl$v.log 2>&1; echo "model_cuda_test pdl$v rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/model_cuda_test_pdl$v.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/model_cuda_test_pdl$v.log | head -20; done )
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16 --log-every 10"
for r in 1 2 3 4; do
  for v in 0 1; do
    MICS_EXP_PDL=$v /tmp/bt/mics $ARGS --steps 30 > /tmp/mics_r$r.txt 2>&1
    echo "round $r mics pdl $v: $(grep -E '^ *tokens/s' /tmp/mics_r$r.txt | head -1 | tr -s ' ') $(grep -E 'step time|final train' /tmp/mics_r$r.txt | head -2 | tr -s ' ' | cut -c1-60 | tr '\n' ' ')"
  done
done
echo "rounds done at $(( $(date +%s) - T0 )) s"
which ncu && for v in 0; do
  MICS_EXP_PDL=$v timeout 200 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv /tmp/bt/mics $ARGS --steps 4 > /tmp/ncu$v.csv 2>/tmp/ncu$v.err
  python3 - $v <<'PY'
import csv,sys,io
v=sys.argv[1]
lines=open(f'/tmp/ncu{v}.csv').read().splitlines()
i=next((k for k,l in enumerate(lines) if l.startswith('"ID"')),None)
if i is None: print('ncu: no table', open(f'/tmp/ncu{v}.err').read()[-500:]); sys.exit()
rows=list(csv.DictReader(io.StringIO('\n'.join(lines[i:]))))
ks=[(r['Kernel Name'],float(r['Metric Value'])) for r in rows if r['Metric Name']=='gpu__time_duration.sum']
unit=rows[0]['Metric Unit']
ad=[k for k,(n,_) in enumerate(ks) if 'adamw' in n]
print('ncu pdl',v,'kernels',len(ks),'unit',unit,'adamw at',ad)
if len(ad)>=2:
    a,b=ad[-2],ad[-1]
    step=ks[a+1:b+1]
    tot=sum(d for _,d in step)
    print(f'one step: {len(step)} kernels, kernel time {tot} {unit}')
    from collections import Counter
    c=Counter(); t=Counter()
    for n,d in step: c[n[:60]]+=1; t[n[:60]]+=d
    for n,d in t.most_common(12): print(f'  {d:12.0f} {c[n]:4d} {n}')
PY
done
( cd /tmp/bt && MICS_EXP_PDL=1 timeout 200 tests/train_cuda_test > $OUT/train_cuda_test_pdl1.log 2>&1; echo "train_cuda_test pdl1 rc $?: $(grep -E '^\[ +(FAILED|PASSED) +\]' $OUT/train_cuda_test_pdl1.log | tr '\n' ' ')"; grep -E "Failure" -A4 $OUT/train_cuda_test_pdl1.log | head -20 )
echo "total $(( $(date +%s) - T0 )) s"
