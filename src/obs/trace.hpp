#pragma once
// Chrome trace JSON (the format chrome://tracing and Perfetto open) for one rank: complete
// events (ph "X", ts/dur in microseconds), pid = rank, tid = the thread (1 "main": compute
// units, data waits, waits for communication, checkpoint phases; 2 "comm": collectives), named
// by "M" metadata events. Times are on the job's common clock (rank 0's, see obs/observer.hpp)
// so that `mics report --merge` lines ranks up.
//
// Bounded: events are kept per training step. The first `pinned_steps` steps (and step 0,
// everything before the first step) are always kept; after that the most recent steps are kept
// while the total stays at or under `max_events`: the oldest unpinned step is dropped whole
// when a new event would exceed it (a sliding window of the last steps). The file says how
// many steps and events were dropped ("otherData").
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace mics::obs {

constexpr int kMainTid = 1;
constexpr int kCommTid = 2;

struct TraceEvent {
  char name[40] = {};
  const char* cat = "";     // static string
  int32_t tid = kMainTid;
  int32_t step = 0;
  int64_t ts_ns = 0;        // this rank's steady clock
  int64_t dur_ns = 0;
  // Collective arguments (cat "collective"): 0/"" otherwise.
  const char* algo = "";
  const char* dtype = "";
  const char* group = "";   // static or owned by the observer for its lifetime
  uint64_t bytes = 0, intra_bytes = 0, inter_bytes = 0;
  int32_t comm_size = 0;
  double busbw_gbps = 0;
};

struct TraceLimits {
  size_t max_events = 200000;  // per rank (about 25 MB of JSON)
  int pinned_steps = 2;
};

class TraceBuffer {
 public:
  explicit TraceBuffer(TraceLimits limits = {});
  void add(const TraceEvent& event);  // any thread
  size_t size() const;
  int64_t dropped_steps() const;
  int64_t dropped_events() const;
  // The whole file. `to_common_ns` is added to every timestamp (ns) to put it on the job's
  // clock with rank 0's sync point as zero.
  std::string to_json(int rank, int world, int64_t to_common_ns, const std::string& other_json) const;

 private:
  struct Chunk {
    int step = 0;
    std::vector<TraceEvent> events;
  };
  mutable std::mutex mutex_;
  TraceLimits limits_;
  std::deque<Chunk> chunks_;  // in step order
  size_t events_ = 0;
  int64_t dropped_steps_ = 0, dropped_events_ = 0;
};

// Inserts the rank into a trace path: "{rank}" is replaced if present, else ".rankN" goes before
// the extension (trace.json -> trace.rank3.json).
std::string trace_path_for_rank(const std::string& path, int rank);

// Merges per-rank trace files into one. When the events exceed max_events, whole steps are
// dropped oldest first (except step 0 and steps <= pinned), on every rank alike, so the merged
// trace shows a consistent window. Returns a one-line description of what was kept.
std::string merge_traces(const std::vector<std::string>& inputs, const std::string& output, size_t max_events);

}  // namespace mics::obs
