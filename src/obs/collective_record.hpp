#pragma once
// Per-collective records: what every collective on a rank did (op, communicator, algorithm,
// dtype, count, bytes per rail, start, duration, bandwidths), kept in a ring of fixed capacity
// so a long run's memory stays flat, and summarised per op and size bucket over the whole run
// (the summaries see every record, the ring only the most recent ones).
//
// Bandwidths follow nccl-tests: algbw = S / time with S the whole array (the gathered output
// of all_gather, the input of reduce_scatter and all_reduce, the buffer of broadcast), and
// busbw = algbw * 2(n-1)/n for all_reduce, algbw * (n-1)/n for all_gather and reduce_scatter,
// algbw for broadcast; barriers move no payload (0). GB/s are 1e9 bytes per second.
//
// Threading: one producer (the thread that runs the communicators: the engine's comm thread,
// or the main thread of `mics bench`) and readers on other threads; a mutex guards the ring and
// the summaries (uncontended: one lock per collective, no allocation after construction).
#include <array>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "base/dtype.hpp"

namespace mics::obs {

enum class CollOp : uint8_t { kAllGather, kReduceScatter, kAllReduce, kBroadcast, kBarrier };
constexpr int kNumCollOps = 5;
const char* to_string(CollOp op);

constexpr int kRails = 2;  // 0: intra-node, 1: inter-node (fabric::Rail's order)

// nccl-tests' bus factor for an op over n ranks.
double bus_factor(CollOp op, int n);

struct CollectiveRecord {
  uint64_t seq = 0;         // 0-based order of this rank's records
  int32_t step = 0;         // the training step it belongs to (0: outside steps)
  CollOp op = CollOp::kAllReduce;
  DType dtype = DType::kF32;
  uint16_t group = 0;       // index into the log's group names (the communicator's name)
  const char* algo = "";    // a static string ("ring", "rd", "hier", "hd")
  int32_t comm_size = 1;
  uint64_t count = 0;       // elements of the whole array
  uint64_t bytes = 0;       // S: the whole array in bytes
  std::array<uint64_t, kRails> rail_bytes{};  // bytes this rank sent, per rail
  int64_t start_ns = 0;     // steady clock (this rank's), nanoseconds
  int64_t dur_ns = 0;
  double algbw_gbps() const { return dur_ns > 0 ? static_cast<double>(bytes) / static_cast<double>(dur_ns) : 0; }
  double busbw_gbps() const { return algbw_gbps() * bus_factor(op, comm_size); }
};

// Size buckets: bucket b holds S in [2^(b-1), 2^b) bytes (bucket 0: S = 0).
constexpr int kSizeBuckets = 48;
int size_bucket(uint64_t bytes);
uint64_t bucket_low(int bucket);   // smallest S of the bucket

struct BucketSummary {
  uint64_t count = 0;
  uint64_t bytes = 0;                          // sum of S
  std::array<uint64_t, kRails> rail_bytes{};   // sum of bytes sent
  double seconds = 0;                          // sum of durations
  double sum_algbw = 0, sum_busbw = 0;         // for the means
  double mean_algbw() const { return count ? sum_algbw / static_cast<double>(count) : 0; }
  double mean_busbw() const { return count ? sum_busbw / static_cast<double>(count) : 0; }
};

struct SummaryRow {
  CollOp op;
  int bucket;
  BucketSummary s;
};

class CollectiveLog {
 public:
  explicit CollectiveLog(size_t capacity = 65536);

  // The index of a communicator name in group_names() (call when a communicator is attached,
  // not per operation).
  uint16_t intern_group(const std::string& name);
  void push(const CollectiveRecord& record);  // fills record.seq

  size_t capacity() const { return ring_.size(); }
  uint64_t total() const;                      // records pushed so far
  // The records still in the ring, oldest first.
  std::vector<CollectiveRecord> recent() const;
  // Non-empty (op, bucket) cells, by op then size.
  std::vector<SummaryRow> summary() const;
  std::array<uint64_t, kRails> rail_totals() const;  // over every record ever pushed
  std::vector<std::string> group_names() const;
  const char* group_name(uint16_t group) const;  // valid for the log's lifetime

  // JSON text: {"records":N,"ring_capacity":C,"rail_bytes":[i,e],"by_op":[{op,bucket_bytes,
  // count,bytes,intra_bytes,inter_bytes,seconds,algbw_gbps,busbw_gbps}...]}
  std::string summary_json() const;
  // One JSON object per line for the records in the ring.
  std::string records_jsonl(int rank) const;

 private:
  mutable std::mutex mutex_;
  std::vector<CollectiveRecord> ring_;
  uint64_t pushed_ = 0;
  std::array<std::array<BucketSummary, kSizeBuckets>, kNumCollOps> cells_{};
  std::array<uint64_t, kRails> rail_totals_{};
  std::deque<std::string> groups_;  // a deque: names keep their address
};

}  // namespace mics::obs
