# call CF (1 GPU): Nsight Compute on LayerNorm backward with the bf16 residual gradient (the default since 62db733):
# where its time goes (the fused kernel and the partial-sum reductions around it), for docs/GPU.md's "What is left"
set -u
export NCCL_NVLS_ENABLE=0
T0=$(date +%s); R=$PWD
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
D=/tmp/mics-gpu-data; mkdir -p $D; [ -f $D/rand_train.bin ] || python3 bench/peers/make_llmc_data.py $D 4000000 > /dev/null
FABRIC_DEB=$R/.gpuwork/libfabric-dev_1.17.0-3_amd64.deb JOBS=14 bash bench/gpu_build.sh /tmp/bt mics || { tail -30 /tmp/bt/build.log; exit 1; }
el "build done"
which ncu; ncu --version | tail -1
ARGS="train --device cuda --seq-len 1024 --data $D/rand_train.bin --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 1 --model gpt2-124m --micro-batch 16 --log-every 10 --steps 3"
# every kernel of one step's LayerNorm backward calls and what runs between them: durations of all kernels of step 3
timeout 200 ncu --clock-control none --launch-skip 700 --launch-count 400 --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum /tmp/bt/mics $ARGS > /tmp/ncu_all.txt 2>&1
python3 - /tmp/ncu_all.txt > $OUT/ncu_kernels_by_name.txt <<'PY'
import re, sys, collections
cur = None; t = collections.defaultdict(float); n = collections.Counter(); rd = collections.defaultdict(float); wr = collections.defaultdict(float)
unit = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "nsecond": 1e-3}
bunit = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "B": 1e-6}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s\s(\S.*?)\s\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", line)
    if m:
        cur = re.sub(r"\(.*", "", m.group(1).replace("(anonymous namespace)::", "")).replace("void mics::model::cuda::", "")[:90]; n[cur] += 1; continue
    m = re.match(r"\s+(gpu__time_duration.sum|dram__bytes_read.sum|dram__bytes_write.sum)\s+(\S+)\s+([\d.,]+)", line)
    if m and cur:
        v = float(m.group(3).replace(",", ""))
        if m.group(1) == "gpu__time_duration.sum": t[cur] += v * unit.get(m.group(2), 1.0)
        elif m.group(1) == "dram__bytes_read.sum": rd[cur] += v * bunit.get(m.group(2), 1.0)
        else: wr[cur] += v * bunit.get(m.group(2), 1.0)
print("kernel\tcalls\ttotal_us\tus_per_call\tMB_read\tMB_written\tGB/s")
for k in sorted(t, key=lambda k: -t[k]):
    print(f"{k}\t{n[k]}\t{t[k]:.1f}\t{t[k]/n[k]:.2f}\t{rd[k]:.1f}\t{wr[k]:.1f}\t{(rd[k]+wr[k])/t[k]*1e3:.0f}")
PY
head -40 $OUT/ncu_kernels_by_name.txt
el "kernel list done"
SEC="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats"
timeout 150 ncu --clock-control none -k regex:layernorm_backward_fused --launch-skip 30 --launch-count 2 $SEC /tmp/bt/mics $ARGS > $OUT/ncu_ln_bwd.txt 2>&1
grep -E "layernorm_backward_fused|Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Issued Ipc|Stall|L1/TEX Hit|L2 Hit|No Eligible|Active Warps Per|Eligible Warps|Block Limit|Dynamic Shared" $OUT/ncu_ln_bwd.txt | grep -v "^==PROF" | head -60
el total
