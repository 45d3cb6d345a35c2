#pragma once
// `mics plan --calibrate RUN`: fit the cost model to a measured `mics train` run or a
// `mics engine-bench --json` file.
//
// An engine-bench file (tools/engine_bench.cpp; "kind": "mics engine-bench") holds the MLP
// stack's shape (model "mlpL..W..", layers, width, its parameters and FLOPs per sample as the
// bench's model::Mlp counts them), the layout (world_size, nodes, micro_batch, grad_accum,
// host_cores, ranks_on_host, compute_threads) and one result per strategy with every timed
// step's time and exposed communication (step_ms, exposed_ms: the slowest rank's; the bench's
// untimed warm-up step is already left out). A file with several strategies is one run each:
// FILE#STRATEGY (e.g. bench.json#mics:2) picks one; --check takes them all.
//
// A run directory holds metrics.jsonl (train/metrics.cpp): "step" records with step_ms and
// comm_exposed_ms, and a final "summary" with the layout (world_size, nodes, partition_size,
// grad_accum, micro_batch, seq_len, recompute, model; host_cores, ranks_on_host and
// compute_threads where the run recorded them). The median step time (or another quantile,
// read_runs; the first step left out: it warms caches and connections) is split into compute (step - exposed
// communication) and exposed communication. Fitted, in order:
//   compute efficiency: the simulator's compute time equals the measured compute time;
//   per-hop latency (fit_latency): its exposed communication equals the measured one
//   (left at its prior when the run exposes none, or no value reaches it). On a host with
//   fewer cores than ranks a collective's exposed time is mostly ranks waiting for a core at
//   every hop, not the wire: the bandwidths stay the cluster's (host:BENCH.json measures them)
//   and the hop latency absorbs the wake-ups.
// On such a host (ranks_on_host > host_cores) the simulator runs each rank's compute at its
// fair share of a core, and the engine's own split is read accordingly: its compute is a whole
// core's when the ranks could have taken the cores in turns within the step (ranks x compute
// <= cores x step; sharded layouts, whose "exposed" time holds the other ranks' compute), else
// the fair share's (DDP: all compute at once); and the hop wait is fitted to the step.
#include <string>
#include <vector>

#include "plan/simulator.hpp"

namespace mics::plan {

struct MeasuredRun {
  std::string path;  // the metrics file (an engine bench's: FILE#STRATEGY)
  std::string kind;  // "train" or "engine-bench"
  std::string model, strategy;
  int world = 1, nodes = 1, partition_size = 1, grad_accum = 1, micro_batch = 1, seq_len = 0, steps = 0;
  bool recompute = false;
  double step_quantile = 0.5;  // which step time stands for the run (0.5: the median)
  double step_s = 0;           // that quantile of the step times (first step left out when there are more)
  double exposed_comm_s = 0;   // the same quantile of the exposed communication per step
  double tokens_per_s = 0;    // the summary's
  uint64_t model_state_bytes = 0, activation_bytes = 0;
  // The host the ranks shared (0: not recorded; older runs): usable cores, ranks on it, compute
  // threads per rank. Reported with the fit.
  int host_cores = 0, ranks_on_host = 0, compute_threads = 0;
};

// RUN_DIR (with metrics.jsonl), the metrics file itself, or an engine-bench JSON (FILE or
// FILE#STRATEGY); the kind is read from the file. read_runs: every run the path holds (an
// engine-bench file: one per strategy); read_run: exactly one, or an error that lists the
// FILE#STRATEGY choices. Both throw mics::Error (layer plan) naming the file and what is
// missing or unknown. step_quantile picks the step time that stands for the run: 0.5 the
// median (default); lower values read a shared host's undisturbed level when other work
// slows some steps (bench/plan_calibration*.sh use 0.25; docs/PLANNING.md).
std::vector<MeasuredRun> read_runs(const std::string& path, double step_quantile = 0.5);
MeasuredRun read_run(const std::string& path, double step_quantile = 0.5);
// "median", "fastest step" or "0.25 quantile": how reports name the statistic.
std::string step_statistic(double step_quantile);

// The run as the simulator sees it on `cluster` (its ranks per node from the run's layout).
RunSpec run_spec(const MeasuredRun& run, Cluster cluster);

struct Calibration {
  CostParams params;
  StepPrediction prediction;  // of the run the parameters were fitted on
  std::string report;         // what was fitted, predicted vs measured
};
Calibration calibrate(const MeasuredRun& run, const Cluster& cluster, const CostParams& prior, bool fit_latency);

}  // namespace mics::plan
