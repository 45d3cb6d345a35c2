#pragma once
// `mics plan --calibrate RUN_DIR`: fit the cost model to a measured `mics train` run.
//
// A run directory holds metrics.jsonl (train/metrics.cpp): "step" records with step_ms and
// comm_exposed_ms, and a final "summary" with the layout (world_size, nodes, partition_size,
// grad_accum, micro_batch, seq_len, recompute, model; host_cores, ranks_on_host and
// compute_threads where the run recorded them). The median step time (the first step
// left out: it warms caches and connections) is split into compute (step - exposed
// communication) and exposed communication. Fitted, in order:
//   compute efficiency: the simulator's compute time equals the measured compute time;
//   per-hop latency (fit_latency): its exposed communication equals the measured one
//   (left at its prior when the run exposes none, or no value reaches it). On a host with
//   fewer cores than ranks a collective's exposed time is mostly ranks waiting for a core at
//   every hop, not the wire: the bandwidths stay the cluster's (host:BENCH.json measures them)
//   and the hop latency absorbs the wake-ups.
#include <string>

#include "plan/simulator.hpp"

namespace mics::plan {

struct MeasuredRun {
  std::string path;  // the metrics file
  std::string model, strategy;
  int world = 1, nodes = 1, partition_size = 1, grad_accum = 1, micro_batch = 1, seq_len = 0, steps = 0;
  bool recompute = false;
  double step_s = 0;          // median step time (first step left out when there are more)
  double exposed_comm_s = 0;  // median exposed communication per step
  double tokens_per_s = 0;    // the summary's
  uint64_t model_state_bytes = 0, activation_bytes = 0;
  // The host the ranks shared (0: not recorded; older runs): usable cores, ranks on it, compute
  // threads per rank. Reported with the fit.
  int host_cores = 0, ranks_on_host = 0, compute_threads = 0;
};

// RUN_DIR (with metrics.jsonl) or the metrics file itself. Throws mics::Error (layer plan)
// naming the file and what is missing.
MeasuredRun read_run(const std::string& path);

// The run as the simulator sees it on `cluster` (its ranks per node from the run's layout).
RunSpec run_spec(const MeasuredRun& run, Cluster cluster);

struct Calibration {
  CostParams params;
  StepPrediction prediction;  // of the run the parameters were fitted on
  std::string report;         // what was fitted, predicted vs measured
};
Calibration calibrate(const MeasuredRun& run, const Cluster& cluster, const CostParams& prior, bool fit_latency);

}  // namespace mics::plan
