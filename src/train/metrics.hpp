#pragma once
// What a run reports: one record per optimizer step and a final summary, as JSON lines
// (--metrics) and on the terminal (a line per step like torchtitan's, or a progress bar with
// ETA when stdout is a terminal).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "base/clock.hpp"

namespace mics::train {

struct StepRecord {
  int step = 0;  // 1-based
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  bool skipped = false;  // non-finite gradients: no update
  double step_ms = 0;
  double tokens_per_s = 0;
  double comm_exposed_ms = 0;  // time compute waited for the engine's communication
  double data_wait_ms = 0;     // time it waited for the data prefetcher
  double checkpoint_ms = 0;    // the step's checkpoint stall (snapshot or blocking save)
  double eval_loss = NAN;      // when an evaluation ran after this step
  // Observability (obs/straggler.hpp): the rank that held the others up, by how much, and the
  // spread of arrival times at the step's collectives; rank 0's bytes sent per rail.
  int straggler_rank = -1;
  double straggler_delay_ms = 0, arrival_spread_ms = 0;
  double intra_bytes = 0, inter_bytes = 0;
};

struct Summary {
  std::string strategy, model;
  int world_size = 1, nodes = 1, partition_size = 1, grad_accum = 1, micro_batch = 1, seq_len = 0, steps = 0;
  bool stopped_early = false, recompute = false;
  double final_loss = NAN, eval_loss = NAN, entropy_floor = -1;
  double tokens_per_s = 0, train_seconds = 0, comm_exposed_ms_per_step = 0, data_wait_ms_per_step = 0;
  double intra_node_bytes_per_step = 0, inter_node_bytes_per_step = 0;
  bool traffic_matches_model = false;
  uint64_t model_state_bytes_per_rank = 0, peak_rss_bytes = 0, activation_bytes = 0;
  uint64_t params = 0;
  double flops_per_token = 0;
  // The host the ranks shared (mics plan --calibrate models ranks competing for its cores):
  // usable cores, ranks on this host, compute threads per rank. 0: not recorded.
  int host_cores = 0, ranks_on_host = 0, compute_threads = 0;
  std::string observability_json;  // a JSON object whose keys join the summary record
};

// The running figures every training loop keeps (CPU, mesh, CUDA), and the step-record and
// summary fields made from them: one definition of steady tokens/s (the steps after the first
// `warmup_steps`, which pay for first touches and lazy set-up).
class RunTally {
 public:
  RunTally(uint64_t tokens_per_step, int warmup_steps) : tokens_per_step_(tokens_per_step), warmup_(warmup_steps) {}
  // A finished step (0-based index): returns its record with the common fields filled.
  StepRecord add(int step, double loss, double lr, double grad_norm, bool skipped, double step_s, double exposed_s);
  int steps() const { return steps_; }
  int steady_steps() const { return steady_steps_; }
  double steady_seconds() const { return steady_s_; }
  double last_loss() const { return last_loss_; }
  double per_step(double total) const { return steps_ ? total / steps_ : 0; }
  // steps, final_loss, tokens_per_s, train_seconds, comm_exposed_ms_per_step.
  void fill(Summary& summary) const;

 private:
  uint64_t tokens_per_step_;
  int warmup_;
  int steps_ = 0, steady_steps_ = 0;
  double train_s_ = 0, steady_s_ = 0, exposed_s_ = 0, last_loss_ = NAN;
};

// JSON lines, flushed after every record so a killed run keeps what it measured.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);  // throws naming the path
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void step(const StepRecord& record);
  void summary(const Summary& summary);

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// The terminal view (rank 0 only; a no-op elsewhere).
class StepPrinter {
 public:
  StepPrinter(bool active, int total_steps, int every);
  void step(const StepRecord& record);
  void note(const std::string& line);  // a line that must not be overwritten by the bar
  void finish();

 private:
  bool active_, bar_;
  int total_, every_;
  Clock::time_point start_ = Clock::now();
  bool bar_drawn_ = false;
};

// The end of every training step: the record to the terminal and the metrics file (when there
// is one) and, when the ranks agreed to stop, the line that says so. Returns `stop`.
bool report_step(StepPrinter& printer, MetricsWriter* metrics, const StepRecord& record, bool stop);

std::string format_summary(const Summary& summary);

}  // namespace mics::train
