#include "base/clock.hpp"

#include <sched.h>
#include <time.h>

#include "base/knobs.hpp"

namespace mics {

void Backoff::pause() {
  ++idle_rounds_;
  const uint32_t spin_rounds = static_cast<uint32_t>(knobs().spin_rounds);
  if (idle_rounds_ <= spin_rounds) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    return;
  }
  if (idle_rounds_ <= spin_rounds + 16) {
    sched_yield();
    return;
  }
  // Sleep 20us, growing to the cap: short enough for latency, long enough to give the core away.
  const uint32_t over = idle_rounds_ - spin_rounds - 16;
  const long cap_ns = static_cast<long>(knobs().max_sleep_us) * 1000;
  long ns = 20'000L << (over < 6 ? over : 6);
  if (ns > cap_ns) ns = cap_ns;
  timespec ts{0, ns};
  nanosleep(&ts, nullptr);
}

}  // namespace mics
