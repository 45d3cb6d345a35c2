#include "base/clock.hpp"

#include <sched.h>
#include <time.h>

#include <atomic>

#include "base/knobs.hpp"

namespace mics {

namespace {
std::atomic<int> g_ranks_on_host{1};
constexpr uint32_t kDefaultSpinRounds = 2000;
}  // namespace

int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return 1;
}

void set_ranks_on_host(int ranks) {
  g_ranks_on_host = ranks;
}
int ranks_on_host() {
  return g_ranks_on_host;
}

// Asked on every idle poll of every wait: no system call here (the affinity is read once).
static uint32_t spin_rounds() {
  const int64_t knob = knobs().spin_rounds;
  if (knob >= 0) return static_cast<uint32_t>(knob);
  static const int cores = usable_cores();
  return g_ranks_on_host.load(std::memory_order_relaxed) > cores ? 0 : kDefaultSpinRounds;
}

long Backoff::step() {
  ++idle_rounds_;
  const uint64_t spin = spin_rounds();
  if (idle_rounds_ <= spin) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    return 0;
  }
  if (idle_rounds_ == spin + 1) {
    yield_until_ = Clock::now() + std::chrono::microseconds(knobs().yield_us);
    sleeps_ = 0;
  }
  if (Clock::now() < yield_until_) {
    sched_yield();
    return 0;
  }
  // Sleep 10us, doubling to the cap: short for latency, long enough to give the core away.
  const long cap_ns = static_cast<long>(knobs().max_sleep_us) * 1000;
  long ns = 10'000L << (sleeps_ < 8 ? sleeps_ : 8u);
  ++sleeps_;
  return ns > cap_ns ? cap_ns : ns;
}

void Backoff::pause() {
  const long ns = step();
  if (ns > 0) {
    timespec ts{0, ns};
    nanosleep(&ts, nullptr);
  }
}

}  // namespace mics
