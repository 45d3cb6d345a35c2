#pragma once
// SIGTERM / SIGINT (a spot reclaim, Ctrl-C, the launcher forwarding either) ask the trainer to
// stop after the current step; the ranks agree on it in the step's control all-reduce, so all
// stop at the same step. A second signal gets the default action (the process ends at once).
#include <csignal>

namespace mics::train {

class StopSignal {
 public:
  StopSignal();   // installs the handlers
  ~StopSignal();  // restores the previous ones
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;
  bool requested() const;

 private:
  struct sigaction old_term_{}, old_int_{};
};

}  // namespace mics::train
