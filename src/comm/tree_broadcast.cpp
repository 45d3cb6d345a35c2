// Binomial-tree broadcast, for small messages: ceil(log2 n) rounds.
//
// With v = (member - root) mod n, a member receives from v - lowbit(v) and then sends to
// v + 2^j for the powers of two below lowbit(v) (all of them for the root) that stay < n.
//
// Traffic: one copy of M per child: bytes_sent(member) =
// children(v) * M, and the children of all members add up to n-1.
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

void tree_broadcast(Communicator& comm, void* buffer, size_t bytes, int root) {
  const int n = comm.size();
  const int v = mod(comm.rank() - root, n);
  Op op(comm, "broadcast", Algo::kRecursiveDoubling, bytes);
  int mask = 1;
  while (mask < n) {
    if (v & mask) {
      op.wait(op.recv(mod(v - mask + root, n), 0, buffer, bytes), "receiving from the parent");
      break;
    }
    mask <<= 1;
  }
  std::vector<fabric::Request*> sends;
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (v + mask < n) sends.push_back(op.send(mod(v + mask + root, n), 0, buffer, bytes));
  op.wait_all(sends, "sending to the children");
}

}  // namespace mics::comm
