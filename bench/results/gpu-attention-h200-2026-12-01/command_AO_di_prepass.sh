# call AO (1 GPU): the Di pre-pass with 16-byte loads (D/8 threads per row) vs HEAD; kernel tests;
# ncu source-level stalls of the bwd kernel
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
( cd /tmp/bt && timeout 250 tests/model_cuda_test > $OUT/model_cuda_test.log 2>&1; echo "model_cuda_test rc $?" >> $OUT/model_cuda_test.log )
grep -E "^\[ +(FAILED|PASSED) +\]| rc |Failure|Expected|Which is|seed" $OUT/model_cuda_test.log | head -30
echo "tests done at $(( $(date +%s) - T0 )) s"
DATA=/tmp/mics-gpu-data; mkdir -p $DATA
python3 bench/peers/make_llmc_data.py $DATA 4000000 > /dev/null 2>&1
ARGS="train --device cuda --seq-len 1024 --data $DATA/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --model gpt2-124m --micro-batch 16"
for r in 1 2 3; do
  for b in bb bt; do
    /tmp/$b/mics $ARGS --log-every 10 --steps 30 > /tmp/r${r}_$b.txt 2>&1
    echo "round $r $b: $(grep -E '^ *tokens/s' /tmp/r${r}_$b.txt | head -1) $(grep -E 'step time' /tmp/r${r}_$b.txt | head -1) $(grep -E 'eval loss' /tmp/r${r}_$b.txt | tail -1)"
  done
done
for b in bb bt; do
  MICS_CUDA_PROFILE=1 /tmp/$b/mics $ARGS --log-every 10 --steps 12 > $OUT/profile_$b.txt 2>&1
  echo "== profile $b"; grep -E "attention|total |step time" $OUT/profile_$b.txt
done
timeout 200 ncu --clock-control none -k regex:flash_bwd_dot --launch-skip 12 --launch-count 1 --section SpeedOfLight /tmp/bt/mics $ARGS --steps 2 --log-every 1 2>&1 | grep -E "Duration|DRAM Throughput"
timeout 200 ncu --clock-control none -k regex:flash_bwd_kernel --launch-skip 12 --launch-count 1 --section SourceCounters --section WarpStateStats -o /tmp/bwd /tmp/bt/mics $ARGS --steps 2 --log-every 1 > /tmp/ncu_bwd.log 2>&1
echo "ncu rc $?"; tail -2 /tmp/ncu_bwd.log
ncu -i /tmp/bwd.ncu-rep --page source --csv --print-source sass > $OUT/bwd_source.csv 2>&1
echo "source csv rc $? lines $(wc -l < $OUT/bwd_source.csv)"
python3 - $OUT/bwd_source.csv <<'PY'
import sys,csv
rows=list(csv.reader(open(sys.argv[1])))
hdr=None
for i,r in enumerate(rows):
    if any('Source' == c for c in r) or any('Warp Stall Sampling' in c for c in r): hdr=i; break
if hdr is None: print('no header', rows[:3]); sys.exit()
H=rows[hdr]; print('columns:', H[:40])
si=[j for j,c in enumerate(H) if 'Warp Stall Sampling (All' in c]
src=[j for j,c in enumerate(H) if c=='Source']
if not si or not src: sys.exit()
si=si[0]; src=src[0]
def num(x):
    try: return float(x.replace(',',''))
    except: return 0.0
body=[r for r in rows[hdr+1:] if len(r)>si]
tot=sum(num(r[si]) for r in body)
print('total stall samples', tot)
for r in sorted(body,key=lambda r:-num(r[si]))[:45]:
    print(f'{num(r[si])/tot*100:5.1f}%  {r[0][:6]} {r[src][:90]}')
PY
echo "total $(( $(date +%s) - T0 )) s"
