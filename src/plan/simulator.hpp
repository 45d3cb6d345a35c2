#pragma once
// The step simulator: plays one optimizer step (S micro-steps) as a timeline of events on
// three streams, the way the engine (shard/engine.hpp, train/trainer.cpp) orders its work:
//
//   compute:  per micro-step  embed fwd (unit 0), block 1..L fwd, head fwd (unit 0),
//             head bwd (unit 0), block L..1 bwd, embed bwd (unit 0); then the optimizer.
//   gather:   the all-gather of a unit's parameters before each use (p > 1; unit 0 twice per
//             micro-step, each block twice, as the engine does), issued `prefetch_depth` compute
//             ops ahead (at the start of compute op i-d for op i), FIFO.
//   reduce:   the reduce-scatter of a unit's gradient after its backward (p > 1), and the 2-hop
//             all-reduce of the shard across the replication group: at the boundary after all
//             micro-steps (the CPU engine: step()), or right after the unit's last reduce-
//             scatter (NCCL frameworks, overlapped with the rest of the backward), or every
//             micro-step (HSDP without set_requires_all_reduce(False)).
// On the CPU engine one communication thread runs gathers and reductions, so `gather` and
// `reduce` are one FIFO stream; NCCL frameworks use two streams (their sharing of a link is not
// modelled). Rules the timeline keeps (tests/plan_test.cpp checks them): events of one stream
// never overlap; a unit's compute starts after its gather ends; a reduce-scatter starts after
// the backward it reduces; the optimizer starts after every collective has ended.
//
// CPU engine on a host with more ranks than cores (CPU-bound): every rank computes at its fair
// share of the cores, host_cores / ranks_on_host of one (StepPrediction::core_share;
// compute_efficiency is then a whole core's), and nothing overlaps: no prefetch, and the
// compute waits for each reduction, because the cores are what every rank waits for and on
// loopback the rails' time is the cores' time too. The step is the compute at the fair share
// plus every collective at the rails' measured speed, scaled to the run's sharing of the cores
// (plan::rails_at_core_sharing; CostParams::host_hop_s, 0 unless given, adds to each hop). --calibrate fits only the compute rate there, to the whole step. This
// replaced a model that overlapped communication with compute and fitted a per-hop wait for a
// core: on the runs of bench/plan_calibration*.sh it missed 20% in 7 of 12 (trainer) and 13-20
// of 40 (engine bench) pairs; docs/PLANNING.md compares both on the same runs.
// The CPU engine all-reduces the replication group's gradients at the boundary as one flat
// array (shard/engine.cpp: one collective, one set of hops), not unit by unit.
#include <string>
#include <vector>

#include "plan/collective_model.hpp"
#include "plan/memory.hpp"
#include "topo/groups.hpp"

namespace mics::plan {

struct RunSpec {
  ModelDesc model;
  Cluster cluster;
  int world = 8;
  topo::Strategy strategy = topo::Strategy::kMics;
  int partition_size = 0;  // mics: 0 = one node; resolved by resolve() (ddp 1, zero3 N)
  int micro_batch = 1, grad_accum = 1, seq_len = 0;  // seq_len 0: the model's context
  bool recompute = false;
  int prefetch_depth = 1;  // 0: each gather issued when its compute is reached (no overlap)
  // CPU engine: the ranks sharing the host's cores (Cluster::host_cores); 0: all `world` of
  // them (the `host` cluster is one machine, its nodes emulated).
  int ranks_on_host = 0;
  // Flat ring all-gathers for ZeRO-3 (DeepSpeed) instead of the hierarchical one. The CPU
  // engine and MiCS use the hierarchical all-gather whenever a partition group spans nodes.
  bool flat_zero3_gather = true;
  bool all_reduce_every_micro_step = false;
  // NCCL frameworks (FSDP's post-backward callback, DeepSpeed's gradient epilogue) wait for a
  // micro-step's reductions before its backward returns; the CPU engine lets them run into the
  // next micro-step (its FIFO comm thread orders them before the next gathers). -1: by cluster.
  int sync_reductions_each_micro_step = -1;
};

// Fills the defaults: seq_len, the partition size (checked against the topology).
RunSpec resolve(RunSpec spec);

enum class Stream { kCompute, kGather, kReduce };
const char* to_string(Stream s);

struct Event {
  Stream stream;
  std::string what;  // "fwd block.3", "all_gather block.3", "reduce_scatter embed", ...
  int micro_step = 0;
  int unit = 0;
  double start = 0, end = 0;  // seconds from the step's start
};

struct StepPrediction {
  RunSpec spec;  // resolved
  int partition_size = 1, replicas = 1;
  double core_share = 1;  // of a core each rank's compute gets (CPU engine, oversubscribed host)
  double step_s = 0, compute_s = 0, optimizer_s = 0, exposed_comm_s = 0;
  double gather_busy_s = 0, reduce_busy_s = 0;  // time each comm stream is busy
  double tflops_per_gpu = 0;  // model FLOPs (6N + 6LCT per token, recompute not counted) / step
  double mfu = 0;             // tflops_per_gpu / peak
  double tokens_per_s = 0;    // whole cluster
  MemoryPlan memory;
  std::vector<Event> timeline;
};

StepPrediction simulate(const RunSpec& spec, const CostParams& params);


}  // namespace mics::plan
