#pragma once
// Where the first rank to see a collective fail says so, and where the others look while they
// wait: a rank stuck behind the failure (waiting on a neighbour that is itself waiting) then
// fails within a second naming the rank that failed first and why, instead of timing out
// naming its innocent neighbour. The Runtime backs it with the rendezvous store; without a
// board (tests of single communicators) ranks rely on their own deadlines.
#include <optional>
#include <string>

namespace mics::comm {

struct FailureReport {
  int rank;             // the rank that saw the failure first
  std::string message;  // its error text
};

class FailureBoard {
 public:
  virtual ~FailureBoard() = default;
  // Best effort and bounded in time: a board that cannot be reached is given up on.
  virtual void publish(int rank, const std::string& message) = 0;
  virtual std::optional<FailureReport> read() = 0;
};

// Process-wide; the Runtime sets it at start-up and clears it when it ends.
void set_failure_board(FailureBoard* board);
FailureBoard* failure_board();

}  // namespace mics::comm
