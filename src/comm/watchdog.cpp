#include "comm/watchdog.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "base/knobs.hpp"
#include "base/strings.hpp"

namespace mics::comm {

namespace {

using SteadyClock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count();
}

// What one thread is running. Written by its thread only; read by the watchdog, which checks
// `generation` before and after reading (a seqlock: odd while being written).
struct Slot {
  std::atomic<uint64_t> generation{0};
  std::atomic<int64_t> deadline_ns{0};  // 0: no operation
  std::atomic<int> peer{-1};
  const char* name = nullptr;
  int algo = 0;
  size_t bytes = 0;
  int member = 0, size = 0;
  double timeout_s = 0;
  std::array<char, 64> comm_name{};
};

constexpr int kSlots = 32;
std::array<Slot, kSlots> g_slots;
std::atomic<int> g_next_slot{0};
thread_local int t_slot = -1;
thread_local WatchedOp* t_innermost = nullptr;

Slot* my_slot() {
  if (t_slot < 0) t_slot = g_next_slot.fetch_add(1);
  return t_slot < kSlots ? &g_slots[static_cast<size_t>(t_slot)] : nullptr;  // beyond: unwatched
}

[[noreturn]] void report_and_exit(const Slot& s, int64_t late_ns) {
  const int peer = s.peer.load();
  const std::string line = fmt::format(
      "{}: error: [comm] stuck: {} ({}, {}) on communicator '{}' (member {} of {}){} did not return {:.1f} s "
      "after its {:.1f} s deadline: a call into the transport is not coming back (a peer that died while "
      "holding a lock of the shm provider does this). Ending this process (MICS_WATCHDOG_GRACE_S). {}\n",
      program_invocation_short_name, s.name, to_string(static_cast<Algo>(s.algo)),
      format_bytes(static_cast<double>(s.bytes)), s.comm_name.data(), s.member, s.size,
      peer >= 0 ? fmt::format(", waiting on rank {},", peer) : std::string(), static_cast<double>(late_ns) / 1e9,
      s.timeout_s, peer >= 0 ? fmt::format("rank {} may have died; check its output", peer)
                             : std::string("check the other ranks' output"));
  // write(2), not stdio: the thread that is stuck may hold stdio's lock.
  [[maybe_unused]] ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  ::_exit(1);
}

void watch(double grace_s) {
  const auto grace_ns = static_cast<int64_t>(grace_s * 1e9);
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const int used = std::min(g_next_slot.load(), kSlots);
    const int64_t now = now_ns();
    for (int i = 0; i < used; ++i) {
      Slot& s = g_slots[static_cast<size_t>(i)];
      const uint64_t before = s.generation.load(std::memory_order_acquire);
      if (before & 1) continue;  // being written: the thread is alive and moving
      const int64_t deadline = s.deadline_ns.load(std::memory_order_acquire);
      if (deadline == 0 || now - deadline < grace_ns) continue;
      Slot copy;
      copy.name = s.name;
      copy.algo = s.algo;
      copy.bytes = s.bytes;
      copy.member = s.member;
      copy.size = s.size;
      copy.timeout_s = s.timeout_s;
      copy.comm_name = s.comm_name;
      copy.peer.store(s.peer.load());
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.generation.load(std::memory_order_relaxed) != before) continue;  // it moved on
      report_and_exit(copy, now - deadline);
    }
  }
}

}  // namespace

WatchedOp::WatchedOp(const Communicator& comm, const char* name, Algo algo, size_t bytes, double timeout_s)
    : comm_(comm), name_(name), algo_(algo), bytes_(bytes), timeout_s_(timeout_s), outer_(t_innermost) {
  t_innermost = this;
  arm();
}

WatchedOp::~WatchedOp() {
  t_innermost = outer_;
  if (outer_) {
    outer_->arm();
    return;
  }
  if (Slot* s = my_slot()) {
    s->generation.fetch_add(1, std::memory_order_acq_rel);
    s->deadline_ns.store(0, std::memory_order_release);
    s->generation.fetch_add(1, std::memory_order_release);
  }
}

void WatchedOp::arm() {
  Slot* s = my_slot();
  if (!s) return;
  s->generation.fetch_add(1, std::memory_order_acq_rel);  // odd: being written
  s->name = name_;
  s->algo = static_cast<int>(algo_);
  s->bytes = bytes_;
  s->member = comm_.rank();
  s->size = comm_.size();
  s->timeout_s = timeout_s_;
  const std::string& cname = comm_.name();
  const size_t n = std::min(cname.size(), s->comm_name.size() - 1);
  std::memcpy(s->comm_name.data(), cname.data(), n);
  s->comm_name[n] = '\0';
  s->peer.store(-1, std::memory_order_relaxed);
  s->deadline_ns.store(now_ns() + static_cast<int64_t>(timeout_s_ * 1e9), std::memory_order_release);
  s->generation.fetch_add(1, std::memory_order_release);  // even: consistent
}

void WatchedOp::set_peer(int global_rank) {
  if (t_innermost != this) return;  // an enclosing operation's wait never runs under an inner one
  if (Slot* s = my_slot()) s->peer.store(global_rank, std::memory_order_relaxed);
}

void start_watchdog() {
  static std::once_flag once;
  std::call_once(once, [] {
    const double grace = knobs().watchdog_grace_s;
    if (grace <= 0) return;
    std::thread(watch, grace).detach();  // lives as long as the process
  });
}

}  // namespace mics::comm
