#pragma once
// A rank's observability: the per-collective log (obs/collective_record.hpp), an optional
// Chrome trace (obs/trace.hpp), the current step, the job's common clock and the straggler
// window (obs/straggler.hpp).
//
// Who calls what:
//   comm::Communicator::set_observer(&observer) on the world communicator makes every
//   collective of it and of communicators split from it call record() (the thread that runs the
//   communicator, the engine's comm thread in training);
//   the trainer calls step_begin(s) at the top of a step and straggler_window() at its end;
//   code anywhere may add spans (ScopedSpan) on the main thread when tracing is on.
//
// The common clock: steady clock + clock().offset_ns is rank 0's steady clock; minus
// clock().epoch_ns it is zero at the clock sync (comm/clock_sync.hpp), which every trace uses.
//
// Debug knob: MICS_DEBUG_SLOW_RANK=R with MICS_DEBUG_SLOW_MS=X makes step_begin() sleep X ms on
// rank R (a deliberately slowed rank, for straggler detection tests).
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "obs/collective_record.hpp"
#include "obs/straggler.hpp"
#include "obs/trace.hpp"

namespace mics::obs {

struct ClockSync {
  int64_t offset_ns = 0;  // add to this rank's steady clock to get rank 0's
  int64_t rtt_ns = 0;     // best round trip of the estimate (error <= rtt/2)
  int64_t epoch_ns = 0;   // rank 0's steady clock at the sync: the common zero
};

inline int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Observer {
 public:
  Observer(int rank, int world, size_t ring_capacity = 65536);
  ~Observer();

  int rank() const { return rank_; }
  int world() const { return world_; }
  CollectiveLog& log() { return log_; }
  const CollectiveLog& log() const { return log_; }

  void enable_trace(TraceLimits limits);
  bool tracing() const { return trace_ != nullptr; }
  TraceBuffer* trace() { return trace_.get(); }
  // Writes the trace (if enabled) to path; throws mics::Error naming it.
  void write_trace(const std::string& path, const std::string& other_json = "") const;

  void set_clock(const ClockSync& clock);
  const ClockSync& clock() const { return clock_; }
  int64_t to_common_ns() const { return clock_.offset_ns - clock_.epoch_ns; }

  // Steps: 1-based; 0 outside steps.
  void step_begin(int step);
  int step() const { return step_.load(std::memory_order_relaxed); }

  // From the communicator (record.step is filled here).
  void record(CollectiveRecord record);
  // A span on a thread (kMainTid, kCommTid); no-op unless tracing.
  void span(const char* cat, std::string_view name, int tid, int64_t start_ns, int64_t dur_ns);

  // Closes the step's window (now) and returns what this rank contributes to the straggler
  // all-reduce (element-wise max over ranks); pass the reduced vector to finish_straggler.
  std::vector<float> straggler_payload();
  StragglerResult finish_straggler(const std::vector<float>& reduced);
  // Bytes the step's collectives sent per rail (the last closed window).
  std::array<uint64_t, kRails> window_rail_bytes() const { return window_bytes_; }

  // Fabric counter baseline (per rail) when the observer was attached: the records' byte totals
  // must equal the counters' growth since then.
  void set_fabric_baseline(std::array<uint64_t, kRails> counters) { fabric_baseline_ = counters; }
  std::array<uint64_t, kRails> fabric_baseline() const { return fabric_baseline_; }

 private:
  int rank_, world_;
  CollectiveLog log_;
  std::unique_ptr<TraceBuffer> trace_;
  ClockSync clock_;
  std::atomic<int> step_{0};
  int64_t slow_ms_ = 0;

  // The straggler window: collectives since step_begin.
  mutable std::mutex window_mutex_;
  int64_t window_start_ns_ = 0;
  int64_t window_busy_ns_ = 0;
  int window_collectives_ = 0;
  std::vector<int64_t> window_arrivals_ns_;  // common clock, first kArrivalSlots
  std::array<uint64_t, kRails> window_open_bytes_{}, window_bytes_{};
  int64_t anchor_ns_ = 0;  // common clock; agreed by every rank after each straggler exchange
  std::array<uint64_t, kRails> fabric_baseline_{};
};

// A span on the main thread from construction to destruction (no-op without an observer or
// without tracing).
class ScopedSpan {
 public:
  ScopedSpan(Observer* observer, const char* cat, std::string_view name, int tid = kMainTid);
  // Named "name index" (formatted only when tracing).
  ScopedSpan(Observer* observer, const char* cat, const char* name, int index, int tid = kMainTid);
  ~ScopedSpan();
  ScopedSpan(const ScopedSpan&) = delete;
  ScopedSpan& operator=(const ScopedSpan&) = delete;

 private:
  Observer* observer_;
  const char* cat_;
  char name_[40] = {};
  int tid_;
  int64_t start_ns_ = 0;
};

}  // namespace mics::obs
