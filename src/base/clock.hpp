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
      : end_(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(seconds))),
        seconds_(seconds) {}
  bool expired() const { return Clock::now() >= end_; }
  double remaining_s() const { return std::chrono::duration<double>(end_ - Clock::now()).count(); }
  double budget_s() const { return seconds_; }

 private:
  Clock::time_point end_;
  double seconds_;
};

// Spin briefly, then yield, then sleep with a growing interval (capped), so that several
// ranks oversubscribing a core still all make progress. reset() after useful work.
// When more ranks than cores share this host, the spinning phase is skipped (MICS_SPIN_ROUNDS
// overrides): a spinning rank would only delay the peer it waits for.
class Backoff {
 public:
  // Spins or yields and returns 0, or returns how long the caller should sleep (ns); the
  // caller may sleep on something that wakes it early (a completion queue's fd).
  long step();
  // step() plus a plain sleep.
  void pause();
  void reset() { idle_rounds_ = 0; }

 private:
  uint32_t idle_rounds_ = 0;
};

// Called once at start-up with the number of ranks on this host; decides the default spin.
void set_ranks_on_host(int ranks);
int ranks_on_host();
int usable_cores();

}  // namespace mics
