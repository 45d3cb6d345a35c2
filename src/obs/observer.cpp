#include "obs/observer.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/knobs.hpp"

namespace mics::obs {

Observer::Observer(int rank, int world, size_t ring_capacity) : rank_(rank), world_(world), log_(ring_capacity) {
  if (knobs().debug_slow_rank == rank) slow_ms_ = knobs().debug_slow_ms;
  window_arrivals_ns_.reserve(kArrivalSlots);
  window_start_ns_ = steady_ns();
}

Observer::~Observer() = default;

void Observer::enable_trace(TraceLimits limits) { trace_ = std::make_unique<TraceBuffer>(limits); }

void Observer::write_trace(const std::string& path, const std::string& other_json) const {
  if (!trace_) return;
  const std::string text = trace_->to_json(rank_, world_, to_common_ns(), other_json);
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  std::ofstream out(path);
  if (!out || !(out << text) || !out.flush())
    throw Error(ErrorKind::kIo, fmt::format("cannot write the trace {}", path),
                {.layer = "obs", .where = "--trace", .hint = "check that the directory exists and is writable"});
}

void Observer::set_clock(const ClockSync& clock) {
  clock_ = clock;
  std::lock_guard<std::mutex> lock(window_mutex_);
  anchor_ns_ = 0;  // the common zero is the sync point
}

void Observer::step_begin(int step) {
  step_.store(step, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(window_mutex_);
    window_start_ns_ = steady_ns();
    window_busy_ns_ = 0;
    window_collectives_ = 0;
    window_arrivals_ns_.clear();
    window_open_bytes_ = {};
  }
  if (slow_ms_ > 0) {
    const int64_t t0 = steady_ns();
    std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms_));
    span("debug", "MICS_DEBUG_SLOW_MS sleep", kMainTid, t0, steady_ns() - t0);
  }
}

void Observer::record(CollectiveRecord r) {
  r.step = step();
  log_.push(r);
  {
    std::lock_guard<std::mutex> lock(window_mutex_);
    const int64_t end = r.start_ns + r.dur_ns;
    if (end > window_start_ns_) {
      window_busy_ns_ += end - std::max(r.start_ns, window_start_ns_);
      if (window_arrivals_ns_.size() < static_cast<size_t>(kArrivalSlots))
        window_arrivals_ns_.push_back(std::max(r.start_ns, window_start_ns_) + to_common_ns());
      ++window_collectives_;
      for (int i = 0; i < kRails; ++i) window_open_bytes_[static_cast<size_t>(i)] += r.rail_bytes[static_cast<size_t>(i)];
    }
  }
  if (trace_) {
    TraceEvent e;
    std::strncpy(e.name, to_string(r.op), sizeof(e.name) - 1);
    e.cat = "collective";
    e.tid = kCommTid;
    e.step = r.step;
    e.ts_ns = r.start_ns;
    e.dur_ns = r.dur_ns;
    e.algo = r.algo;
    e.dtype = to_string(r.dtype);
    e.group = log_.group_name(r.group);
    e.bytes = r.bytes;
    e.intra_bytes = r.rail_bytes[0];
    e.inter_bytes = r.rail_bytes[1];
    e.comm_size = r.comm_size;
    e.busbw_gbps = r.busbw_gbps();
    trace_->add(e);
  }
}

void Observer::span(const char* cat, std::string_view name, int tid, int64_t start_ns, int64_t dur_ns) {
  if (!trace_) return;
  TraceEvent e;
  const size_t n = std::min(name.size(), sizeof(e.name) - 1);
  std::memcpy(e.name, name.data(), n);
  e.cat = cat;
  e.tid = tid;
  e.step = step();
  e.ts_ns = start_ns;
  e.dur_ns = dur_ns;
  trace_->add(e);
}

std::vector<float> Observer::straggler_payload() {
  const int64_t now = steady_ns();
  StragglerWindow w;
  {
    std::lock_guard<std::mutex> lock(window_mutex_);
    w.idle_ms = static_cast<double>(now - window_start_ns_ - window_busy_ns_) * 1e-6;
    for (int64_t a : window_arrivals_ns_) w.arrivals_ms.push_back(static_cast<double>(a - anchor_ns_) * 1e-6);
    w.close_ms = static_cast<double>(now + to_common_ns() - anchor_ns_) * 1e-6;
    w.collectives = window_collectives_;
    window_bytes_ = window_open_bytes_;
  }
  return obs::straggler_payload(rank_, world_, w);
}

StragglerResult Observer::finish_straggler(const std::vector<float>& reduced) {
  StragglerResult r = analyze_stragglers(reduced, world_);
  std::lock_guard<std::mutex> lock(window_mutex_);
  anchor_ns_ += std::llround(static_cast<double>(r.close_max_ms) * 1e6);
  return r;
}

ScopedSpan::ScopedSpan(Observer* observer, const char* cat, std::string_view name, int tid)
    : observer_(observer && observer->tracing() ? observer : nullptr), cat_(cat), tid_(tid) {
  if (!observer_) return;
  const size_t n = std::min(name.size(), sizeof(name_) - 1);
  std::memcpy(name_, name.data(), n);
  start_ns_ = steady_ns();
}

ScopedSpan::ScopedSpan(Observer* observer, const char* cat, const char* name, int index, int tid)
    : observer_(observer && observer->tracing() ? observer : nullptr), cat_(cat), tid_(tid) {
  if (!observer_) return;
  fmt::format_to_n(name_, sizeof(name_) - 1, "{} {}", name, index);
  start_ns_ = steady_ns();
}

ScopedSpan::~ScopedSpan() {
  if (observer_) observer_->span(cat_, name_, tid_, start_ns_, steady_ns() - start_ns_);
}

}  // namespace mics::obs
