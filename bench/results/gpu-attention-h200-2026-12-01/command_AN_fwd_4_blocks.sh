# call AN (1 GPU): forward attention at 4 blocks per SM (launch bounds, 128 registers) vs HEAD; per-kernel ncu durations of one step
# diagonal tiles): SASS counts, kernel tests, then HEAD vs new interleaved + profiles
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
R=$PWD
F=/tmp/fab; dpkg -x $R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb $F
ln -sf /usr/lib/x86_64-linux-gnu/libfabric.so.1 $F/usr/lib/x86_64-linux-gnu/libfabric.so
CM="-G Ninja -DCMAKE_BUILD_TYPE=Release -DMICS_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DMICS_FABRIC_PREFIX=$F"
cmake -S . -B /tmp/bt $CM > /tmp/configure.log 2>&1
cmake -S .gpuwork/base -B /tmp/bb $CM > /tmp/configure_base.log 2>&1
ninja -C /tmp/bt -j16 mics model_cuda_test > $OUT/build.log 2>&1 || { grep -E "error|FAILED" $OUT/build.log | head -20; exit 1; }
ninja -C /tmp/bb -j16 mics > /tmp/build_base.log 2>&1 || { grep -E "error|FAILED" /tmp/build_base.log | head -20; exit 1; }
echo "builds done at $(( $(date +%s) - T0 )) s"
for b in bb bt; do
  cuobjdump -sass /tmp/$b/src/CMakeFiles/mics_lib.dir/model/cuda/flash.cu.o > /tmp/sass_$b.txt
  python3 - /tmp/sass_$b.txt $b <<'PY'
import sys,re,collections
fn=None; c=collections.defaultdict(collections.Counter)
for l in open(sys.argv[1]):
    m=re.search(r'Function : (\S+)',l)
    if m: fn=m.group(1); continue
    m=re.search(r'/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)',l)
    if m and fn: c[fn][m.group(2).split('.')[0]]+=1
for f,cc in c.items():
    if ('flash_fwd' in f and 'ILi64' in f) or ('flash_bwd_kernelILi64ELi1ELi3ELi4' in f):
        tot=sum(cc.values())
        print(sys.argv[2], f[:60], 'static instrs', tot, 'top:', ' '.join(f'{k}:{v}' for k,v in cc.most_common(14)))
PY
done
( cd /tmp/bt && timeout 250 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure|Expected|Which is|seed|observed|max err" $OUT/model_cuda_test.log | head -30
echo "tests done at $(( $(date +%s) - T0 )) s"
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2 3; do
  for b in bb bt; do
    /tmp/$b/mics $ARGS --log-every 10 --steps 30 > /tmp/r${r}_$b.txt 2>&1
    echo "round $r $b: $(grep -E '^ *tokens/s' /tmp/r${r}_$b.txt | head -1) $(grep -E 'step time' /tmp/r${r}_$b.txt | head -1) $(grep -E 'eval loss|val loss' /tmp/r${r}_$b.txt | tail -1)"
  done
done
for b in bb bt; do
  MICS_CUDA_PROFILE=1 /tmp/$b/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_$b.txt 2>&1
  echo "== profile $b"; grep -E "attention|total |step time" $OUT/profile_$b.txt
done
echo "total $(( $(date +%s) - T0 )) s"
# every kernel of step 3 (after 2 steps of ~400 launches), durations only
timeout 200 ncu --clock-control none --launch-skip 900 --launch-count 450 --section SpeedOfLight --print-summary per-kernel /tmp/bt/mics $ARGS --steps 4 --log-every 1 > $OUT/mics_ncu.txt 2>&1
echo "ncu rc $?"
python3 - $OUT/mics_ncu.txt <<'PY'
import sys,re
txt=open(sys.argv[1]).read().splitlines()
name=None; rows=[]
for l in txt:
    m=re.match(r'^\s{2}(\S.*\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\).*)$', l)
    if m: name=m.group(1)
    if 'Duration' in l and name:
        inv=re.search(r'Invocations (\d+)',name); parts=l.split()
        unit=parts[1]; avg=float(parts[-1].replace(',',''))
        us=avg*1000 if unit=='ms' else avg
        n=int(inv.group(1)) if inv else 1
        rows.append((us*n,n,us,name[:100])); name=None
tot=sum(r[0] for r in rows)
for r in sorted(rows,reverse=True): print(f'{r[0]:9.1f} us total {r[1]:4d} x {r[2]:8.2f} us  {r[3]}')
print('sum', round(tot,1), 'us over the captured launches')
PY
echo "total $(( $(date +%s) - T0 )) s"
