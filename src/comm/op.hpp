#pragma once
// One collective operation in flight: posts tagged sends/receives to members, progresses the
// transport while waiting, and turns a failed or overdue request into an error that names
// the operation, the communicator and the peer.
//
// Tag layout (60 bits, within every provider's tag space):
//   [59:44] communicator id   [43:28] operation sequence   [27:0] message index in the op
#include <cstdint>
#include <string>
#include <vector>

#include "base/clock.hpp"
#include "comm/communicator.hpp"
#include "comm/watchdog.hpp"

namespace mics::comm {

class Op {
 public:
  Op(Communicator& comm, const char* name, Algo algo, size_t bytes);
  // Point-to-point (point_to_point.cpp): the caller's 16-bit tag takes the sequence's place
  // (no sequence is consumed, so collectives on the same communicator stay matched) and bit
  // 27 of the index marks the message as point-to-point.
  struct PointToPoint {
    uint16_t tag;
  };
  Op(Communicator& comm, const char* name, size_t bytes, PointToPoint p2p);
  ~Op();
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;

  fabric::Request* send(int member, uint32_t index, const void* buf, size_t bytes);
  fabric::Request* recv(int member, uint32_t index, void* buf, size_t bytes);
  // Progresses until the request is done, then releases it. `what` describes the wait
  // ("step 2 of 3") for the error message. Throws on failure or deadline.
  void wait(fabric::Request* request, const char* what);
  // Progresses once; returns true (and releases) if the request is done.
  bool test(fabric::Request* request);
  // Waits for every request in the list (e.g. the outstanding sends), then clears it.
  void wait_all(std::vector<fabric::Request*>& requests, const char* what);
  // Releases the finished requests at the front of the list without waiting.
  void reap(std::vector<fabric::Request*>& requests);

  static constexpr uint32_t kMaxIndex = (1u << 28) - 1;

 private:
  [[noreturn]] void fail(fabric::Request* request, const char* what, bool timed_out);
  // Re-throws a transport error with this operation's description added to where it happened.
  [[noreturn]] void rethrow_in_op(const Error& e) const;
  // Throws if another rank has reported a failure (checked at most twice a second).
  void check_failure_board();
  std::string where() const;
  uint64_t tag(uint32_t index) const;

  Communicator& comm_;
  fabric::Transport& transport_;
  const char* name_;
  Algo algo_;
  size_t bytes_;
  uint16_t sequence_;
  Deadline deadline_;
  WatchedOp watch_;  // the backstop if a transport call never returns (comm/watchdog.hpp)
  Backoff backoff_;
  int outstanding_ = 0;
  uint32_t index_flag_ = 0;  // 1 << 27 for point-to-point messages
  Clock::time_point next_board_check_;
};

}  // namespace mics::comm
