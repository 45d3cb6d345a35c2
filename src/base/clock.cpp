#include "base/clock.hpp"

#include <sched.h>
#include <time.h>

#include <atomic>

#include "base/knobs.hpp"

namespace mics {

namespace {
std::atomic<int> g_ranks_on_host{1};
constexpr uint32_t kDefaultSpinRounds = 2000;
constexpr uint32_t kYieldRounds = 16;
}  // namespace

int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return 1;
}

void set_ranks_on_host(int ranks) { g_ranks_on_host = ranks; }
int ranks_on_host() { return g_ranks_on_host; }

static uint32_t spin_rounds() {
  const int64_t knob = knobs().spin_rounds;
  if (knob >= 0) return static_cast<uint32_t>(knob);
  return g_ranks_on_host.load() > usable_cores() ? 0 : kDefaultSpinRounds;
}

long Backoff::step() {
  ++idle_rounds_;
  const uint32_t spin = spin_rounds();
  if (idle_rounds_ <= spin) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    return 0;
  }
  const uint32_t yields = kYieldRounds;
  if (idle_rounds_ <= spin + yields) {
    sched_yield();
    return 0;
  }
  // Sleep 10us, doubling to the cap: short for latency, long enough to give the core away.
  const uint32_t over = idle_rounds_ - spin - yields;
  const long cap_ns = static_cast<long>(knobs().max_sleep_us) * 1000;
  long ns = 10'000L << (over < 8 ? over : 8);
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
