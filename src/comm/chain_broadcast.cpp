// Pipelined chain broadcast, for large messages: root -> root+1 -> ... -> root+n-1, the
// message cut into MICS_CHUNK_BYTES chunks that each member forwards as soon as they arrive,
// so the time approaches M / link bandwidth for any n.
//
// Traffic: every member but the last in the chain sends M; the last sends nothing.
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

namespace {
constexpr size_t kRecvWindow = 64;
}

void chain_broadcast(Communicator& comm, void* buffer, size_t bytes, int root) {
  const int n = comm.size();
  const int v = mod(comm.rank() - root, n);
  const int next = v + 1 < n ? mod(comm.rank() + 1, n) : -1;
  const int prev = mod(comm.rank() - 1, n);
  auto* buf = static_cast<std::byte*>(buffer);
  Op op(comm, "broadcast", Algo::kRing, bytes);
  const std::vector<Segment> chunks = chunk_range(0, bytes, 1);
  MICS_CHECK(chunks.size() <= Op::kMaxIndex, "too many chunks for the tag");
  std::vector<fabric::Request*> sends;
  if (v == 0) {
    for (size_t c = 0; c < chunks.size(); ++c)
      sends.push_back(
          op.send(next, static_cast<uint32_t>(c), buf + chunks[c].offset, chunks[c].bytes));
    op.wait_all(sends, "chain broadcast sends");
    return;
  }
  std::vector<fabric::Request*> recvs;
  size_t posted = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    while (posted < chunks.size() && posted < c + kRecvWindow) {
      recvs.push_back(op.recv(prev, static_cast<uint32_t>(posted), buf + chunks[posted].offset,
                              chunks[posted].bytes));
      ++posted;
    }
    op.wait(recvs[c], "chain broadcast chunk");
    if (next >= 0)
      sends.push_back(
          op.send(next, static_cast<uint32_t>(c), buf + chunks[c].offset, chunks[c].bytes));
    op.reap(sends);
  }
  op.wait_all(sends, "chain broadcast sends");
}

}  // namespace mics::comm
