// Dissemination barrier: in round k every member signals member r + 2^k and waits for the
// signal of member r - 2^k; after ceil(log2 n) rounds every member has heard, directly or
// not, from all others. Messages are empty: bytes_sent = 0, ceil(log2 n) messages.
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

void dissemination_barrier(Communicator& comm) {
  const int n = comm.size();
  const int r = comm.rank();
  Op op(comm, "barrier", Algo::kRecursiveDoubling, 0);
  uint32_t round = 0;
  for (int d = 1; d < n; d <<= 1, ++round) {
    fabric::Request* rx = op.recv(mod(r - d, n), round, nullptr, 0);
    fabric::Request* tx = op.send(mod(r + d, n), round, nullptr, 0);
    op.wait(rx, "barrier round");
    op.wait(tx, "barrier round");
  }
}

}  // namespace mics::comm
