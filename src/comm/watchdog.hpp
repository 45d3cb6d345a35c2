#pragma once
// The backstop behind MICS_TIMEOUT_S. Every operation checks its own deadline while it waits,
// but only between calls into the transport: a libfabric call that never returns (the shm
// provider spinning on a lock that a killed peer held, for one) would hang the rank for good.
// So each thread's innermost operation is registered here (lock-free, a few stores per
// operation), and a watchdog thread checks twice a second: an operation still running
// MICS_WATCHDOG_GRACE_S after its deadline cannot return any more, and the watchdog writes the
// same kind of error line the operation would have thrown (operation, communicator, the rank
// it was waiting on) and ends the process with status 1, as NCCL's watchdog does in PyTorch.
// This is the one place below tools/ that ends a process; MICS_WATCHDOG_GRACE_S=0 turns it off.
#include <cstddef>

#include "comm/communicator.hpp"

namespace mics::comm {

// One operation as the watchdog sees it (RAII; nests: the innermost one is watched, and when
// it ends the enclosing one is watched again with a fresh deadline: its own waits enforce its
// real one).
class WatchedOp {
 public:
  WatchedOp(const Communicator& comm, const char* name, Algo algo, size_t bytes, double timeout_s);
  ~WatchedOp();
  WatchedOp(const WatchedOp&) = delete;
  WatchedOp& operator=(const WatchedOp&) = delete;
  // The rank (global) this operation is waiting on or posting to now; -1 when none.
  void set_peer(int global_rank);

 private:
  void arm();
  const Communicator& comm_;
  const char* name_;
  Algo algo_;
  size_t bytes_;
  double timeout_s_;
  WatchedOp* outer_;
};

// Starts the watchdog thread once per process (Runtime::start calls it).
void start_watchdog();

}  // namespace mics::comm
