#include "obs/trace.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace mics::obs {

TraceBuffer::TraceBuffer(TraceLimits limits) : limits_(limits) {
  limits_.max_events = std::max<size_t>(limits_.max_events, 16);
}

void TraceBuffer::add(const TraceEvent& event) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Steps arrive in order, but a collective of step s may be recorded after step s+1 began
  // on the main thread: put it in its own step's chunk when that still exists.
  auto it = chunks_.end();
  for (auto c = chunks_.rbegin(); c != chunks_.rend(); ++c) {
    if (c->step == event.step) {
      it = std::prev(c.base());
      break;
    }
    if (c->step < event.step) break;
  }
  if (it == chunks_.end()) {
    if (!chunks_.empty() && chunks_.back().step > event.step) return;  // its step was dropped
    chunks_.push_back(Chunk{event.step, {}});
    it = std::prev(chunks_.end());
  }
  it->events.push_back(event);
  ++events_;
  // Over the limit: drop the oldest unpinned step that is not the one being written.
  while (events_ > limits_.max_events) {
    auto victim = std::find_if(chunks_.begin(), chunks_.end(), [&](const Chunk& c) {
      return c.step > limits_.pinned_steps && c.step != event.step;
    });
    if (victim == chunks_.end()) {
      // Only pinned steps and the current one: drop this event instead.
      it->events.pop_back();
      --events_;
      ++dropped_events_;
      break;
    }
    events_ -= victim->events.size();
    dropped_events_ += static_cast<int64_t>(victim->events.size());
    ++dropped_steps_;
    chunks_.erase(victim);
  }
}

size_t TraceBuffer::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return events_;
}
int64_t TraceBuffer::dropped_steps() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return dropped_steps_;
}
int64_t TraceBuffer::dropped_events() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return dropped_events_;
}

namespace {

void append_escaped(std::string& out, const char* s) {
  for (; *s; ++s) {
    const char ch = *s;
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(ch));
    } else {
      out += ch;
    }
  }
}

}  // namespace

std::string TraceBuffer::to_json(int rank, int world, int64_t to_common_ns, const std::string& other_json) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  out.reserve(events_ * 200 + 1024);
  out += "{\"displayTimeUnit\":\"ms\",\"otherData\":";
  nlohmann::json other = other_json.empty() ? nlohmann::json::object() : nlohmann::json::parse(other_json);
  other["rank"] = rank;
  other["world_size"] = world;
  other["max_events"] = limits_.max_events;
  other["pinned_steps"] = limits_.pinned_steps;
  other["dropped_steps"] = dropped_steps_;
  other["dropped_events"] = dropped_events_;
  other["window"] = "steps <= pinned_steps and the most recent steps that fit max_events";
  out += other.dump();
  out += ",\"traceEvents\":[\n";
  out += fmt::format("{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{0},\"tid\":0,\"args\":{{\"name\":\"rank {0}\"}}}},\n", rank);
  out += fmt::format("{{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":{0},\"tid\":0,\"args\":{{\"sort_index\":{0}}}}},\n", rank);
  out += fmt::format("{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":\"main\"}}}},\n", rank, kMainTid);
  out += fmt::format("{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":\"comm\"}}}}", rank, kCommTid);
  for (const auto& chunk : chunks_)
    for (const auto& e : chunk.events) {
      out += ",\n{\"ph\":\"X\",\"name\":\"";
      append_escaped(out, e.name);
      out += "\",\"cat\":\"";
      append_escaped(out, e.cat);
      out += fmt::format("\",\"pid\":{},\"tid\":{},\"ts\":{:.3f},\"dur\":{:.3f},\"args\":{{\"step\":{}", rank, e.tid,
                         static_cast<double>(e.ts_ns + to_common_ns) * 1e-3, static_cast<double>(e.dur_ns) * 1e-3, e.step);
      if (e.comm_size > 0) {
        out += ",\"algo\":\"";
        append_escaped(out, e.algo);
        out += "\",\"dtype\":\"";
        append_escaped(out, e.dtype);
        out += "\",\"group\":\"";
        append_escaped(out, e.group);
        out += fmt::format("\",\"n\":{},\"bytes\":{},\"intra_bytes\":{},\"inter_bytes\":{},\"busbw_gbps\":{:.4f}", e.comm_size,
                           e.bytes, e.intra_bytes, e.inter_bytes, e.busbw_gbps);
      }
      out += "}}";
    }
  out += "\n]}\n";
  return out;
}

std::string trace_path_for_rank(const std::string& path, int rank) {
  const std::string r = std::to_string(rank);
  if (const size_t at = path.find("{rank}"); at != std::string::npos) return path.substr(0, at) + r + path.substr(at + 6);
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path + ".rank" + r;
  return path.substr(0, dot) + ".rank" + r + path.substr(dot);
}

std::string merge_traces(const std::vector<std::string>& inputs, const std::string& output, size_t max_events) {
  if (inputs.empty())
    throw Error(ErrorKind::kInvalidArgument, "no trace files to merge",
                {.layer = "obs", .where = "mics report --merge", .hint = "give the per-rank files, e.g. RUN/trace/*.json"});
  nlohmann::json merged = {{"displayTimeUnit", "ms"}, {"traceEvents", nlohmann::json::array()}};
  nlohmann::json ranks = nlohmann::json::array();
  std::vector<nlohmann::json> events;
  std::map<int64_t, size_t> per_step;  // events per step over all ranks
  int pinned = 0;
  for (const auto& path : inputs) {
    std::ifstream in(path);
    if (!in)
      throw Error(ErrorKind::kIo, fmt::format("cannot read {}", path), {.layer = "obs", .where = "mics report --merge"});
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{} is not valid JSON: {}", path, e.what()),
                  {.layer = "obs", .where = "mics report --merge", .hint = "give trace files written by --trace"});
    }
    if (!j.contains("traceEvents") || !j["traceEvents"].is_array())
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{} has no traceEvents array", path),
                  {.layer = "obs", .where = "mics report --merge", .hint = "give trace files written by --trace"});
    if (j.contains("otherData")) {
      ranks.push_back(j["otherData"]);
      pinned = std::max(pinned, j["otherData"].value("pinned_steps", 0));
    }
    for (auto& e : j["traceEvents"]) {
      if (e.value("ph", "") == "X") ++per_step[e["args"].value("step", int64_t{0})];
      events.push_back(std::move(e));
    }
  }
  // Drop the oldest unpinned steps until the events fit.
  size_t total = events.size();
  std::set<int64_t> dropped;
  for (auto& [step, n] : per_step) {
    if (total <= max_events) break;
    if (step <= pinned) continue;
    dropped.insert(step);
    total -= n;
  }
  for (auto& e : events)
    if (e.value("ph", "") != "X" || !dropped.count(e["args"].value("step", int64_t{0})))
      merged["traceEvents"].push_back(std::move(e));
  merged["otherData"] = {{"ranks", ranks}, {"merged_files", inputs.size()}, {"dropped_steps", dropped.size()}, {"max_events", max_events}};
  std::ofstream out(output);
  if (!out)
    throw Error(ErrorKind::kIo, fmt::format("cannot write {}", output),
                {.layer = "obs", .where = "mics report --merge", .hint = "check the directory exists and is writable"});
  out << merged.dump() << "\n";
  if (!out.flush())
    throw Error(ErrorKind::kIo, fmt::format("writing {} failed", output), {.layer = "obs", .where = "mics report --merge"});
  return fmt::format("merged {} files: {} events ({} steps dropped to stay under {} events) -> {}", inputs.size(),
                     merged["traceEvents"].size(), dropped.size(), max_events, output);
}

}  // namespace mics::obs
