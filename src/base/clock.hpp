#pragma once
// Monotonic time, deadlines, and a waiting strategy that does not burn the core.
#include <chrono>
#include <cstdint>

namespace mics {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline uint64_t now_us() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
          .count());
}

class Deadline {
 public:
  explicit Deadline(double seconds)
      : end_(Clock::now() +
             std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds))),
        seconds_(seconds) {}
  bool expired() const { return Clock::now() >= end_; }
  double remaining_s() const { return std::chrono::duration<double>(end_ - Clock::now()).count(); }
  double budget_s() const { return seconds_; }

 private:
  Clock::time_point end_;
  double seconds_;
};

// An idle wait spins briefly, then yields the core for up to MICS_YIELD_US, then sleeps with a
// growing interval (capped at MICS_MAX_SLEEP_US), so that ranks oversubscribing the cores all
// make progress and a long wait costs no CPU. Yielding (not sleeping) is what keeps
// oversubscribed collectives fast: sched_yield() hands the core to a peer with work at once
// and costs nothing when no one else is runnable. When more ranks than cores share this
// host the spinning phase is skipped (MICS_SPIN_ROUNDS overrides): a spinning rank would
// only delay the peer it waits for. reset() after useful work.
class Backoff {
 public:
  // Spins or yields and returns 0, or returns how long the caller should sleep (ns); the
  // caller may sleep on something that wakes it early (a completion queue's fd).
  long step();
  // step() plus a plain sleep.
  void pause();
  void reset() { idle_rounds_ = 0; }

 private:
  uint64_t idle_rounds_ = 0;
  Clock::time_point yield_until_{};
  uint32_t sleeps_ = 0;
};

// Called once at start-up with the number of ranks on this host; decides the default spin.
void set_ranks_on_host(int ranks);
int ranks_on_host();
int usable_cores();

}  // namespace mics
