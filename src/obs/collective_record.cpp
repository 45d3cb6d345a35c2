#include "obs/collective_record.hpp"

#include <algorithm>
#include <bit>

#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace mics::obs {

const char* to_string(CollOp op) {
  switch (op) {
    case CollOp::kAllGather:
      return "all_gather";
    case CollOp::kReduceScatter:
      return "reduce_scatter";
    case CollOp::kAllReduce:
      return "all_reduce";
    case CollOp::kBroadcast:
      return "broadcast";
    case CollOp::kBarrier:
      return "barrier";
  }
  return "?";
}

double bus_factor(CollOp op, int n) {
  if (n <= 1) return 0;
  switch (op) {
    case CollOp::kAllReduce:
      return 2.0 * (n - 1) / n;
    case CollOp::kAllGather:
    case CollOp::kReduceScatter:
      return static_cast<double>(n - 1) / n;
    case CollOp::kBroadcast:
      return 1.0;
    case CollOp::kBarrier:
      return 0.0;
  }
  return 0;
}

int size_bucket(uint64_t bytes) {
  return std::min(kSizeBuckets - 1, static_cast<int>(std::bit_width(bytes)));
}

uint64_t bucket_low(int bucket) { return bucket == 0 ? 0 : uint64_t{1} << (bucket - 1); }

CollectiveLog::CollectiveLog(size_t capacity) : ring_(std::max<size_t>(1, capacity)) {}

uint16_t CollectiveLog::intern_group(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t i = 0; i < groups_.size(); ++i)
    if (groups_[i] == name) return static_cast<uint16_t>(i);
  MICS_CHECK(groups_.size() < 0xffff, "too many communicator names");
  groups_.push_back(name);
  return static_cast<uint16_t>(groups_.size() - 1);
}

void CollectiveLog::push(const CollectiveRecord& record) {
  std::lock_guard<std::mutex> lock(mutex_);
  CollectiveRecord& slot = ring_[pushed_ % ring_.size()];
  slot = record;
  slot.seq = pushed_++;
  BucketSummary& cell = cells_[static_cast<size_t>(record.op)][static_cast<size_t>(size_bucket(record.bytes))];
  ++cell.count;
  cell.bytes += record.bytes;
  cell.seconds += static_cast<double>(record.dur_ns) * 1e-9;
  cell.sum_algbw += record.algbw_gbps();
  cell.sum_busbw += record.busbw_gbps();
  for (int r = 0; r < kRails; ++r) {
    cell.rail_bytes[static_cast<size_t>(r)] += record.rail_bytes[static_cast<size_t>(r)];
    rail_totals_[static_cast<size_t>(r)] += record.rail_bytes[static_cast<size_t>(r)];
  }
}

uint64_t CollectiveLog::total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pushed_;
}

std::vector<CollectiveRecord> CollectiveLog::recent() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<CollectiveRecord> out;
  const uint64_t n = std::min<uint64_t>(pushed_, ring_.size());
  out.reserve(n);
  for (uint64_t i = pushed_ - n; i < pushed_; ++i) out.push_back(ring_[i % ring_.size()]);
  return out;
}

std::vector<SummaryRow> CollectiveLog::summary() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<SummaryRow> rows;
  for (int op = 0; op < kNumCollOps; ++op)
    for (int b = 0; b < kSizeBuckets; ++b) {
      const BucketSummary& c = cells_[static_cast<size_t>(op)][static_cast<size_t>(b)];
      if (c.count) rows.push_back({static_cast<CollOp>(op), b, c});
    }
  return rows;
}

std::array<uint64_t, kRails> CollectiveLog::rail_totals() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return rail_totals_;
}

std::vector<std::string> CollectiveLog::group_names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {groups_.begin(), groups_.end()};
}

const char* CollectiveLog::group_name(uint16_t group) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return group < groups_.size() ? groups_[group].c_str() : "?";
}

std::string CollectiveLog::summary_json() const {
  nlohmann::json j;
  const auto totals = rail_totals();
  j["records"] = total();
  j["ring_capacity"] = capacity();
  j["rail_bytes"] = {totals[0], totals[1]};
  j["by_op"] = nlohmann::json::array();
  for (const auto& row : summary())
    j["by_op"].push_back({{"op", to_string(row.op)},
                          {"bucket_bytes", bucket_low(row.bucket)},
                          {"count", row.s.count},
                          {"bytes", row.s.bytes},
                          {"intra_bytes", row.s.rail_bytes[0]},
                          {"inter_bytes", row.s.rail_bytes[1]},
                          {"seconds", row.s.seconds},
                          {"algbw_gbps", row.s.mean_algbw()},
                          {"busbw_gbps", row.s.mean_busbw()}});
  return j.dump();
}

std::string CollectiveLog::records_jsonl(int rank) const {
  const auto names = group_names();
  std::string out;
  for (const auto& r : recent()) {
    nlohmann::json j = {{"rank", rank},
                        {"seq", r.seq},
                        {"step", r.step},
                        {"op", to_string(r.op)},
                        {"group", r.group < names.size() ? names[r.group] : std::string("?")},
                        {"algo", r.algo},
                        {"dtype", to_string(r.dtype)},
                        {"n", r.comm_size},
                        {"count", r.count},
                        {"bytes", r.bytes},
                        {"intra_bytes", r.rail_bytes[0]},
                        {"inter_bytes", r.rail_bytes[1]},
                        {"start_us", static_cast<double>(r.start_ns) * 1e-3},
                        {"dur_us", static_cast<double>(r.dur_ns) * 1e-3},
                        {"algbw_gbps", r.algbw_gbps()},
                        {"busbw_gbps", r.busbw_gbps()}};
    out += j.dump();
    out += '\n';
  }
  return out;
}

}  // namespace mics::obs
