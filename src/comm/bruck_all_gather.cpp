// Bruck all-gather, for small messages: ceil(log2 n) rounds for any n.
//
// Member r keeps a staging array of all blocks rotated so its own comes first (block i of the
// staging array is block (r+i) mod n). In round k (distance d = 2^k) it sends the first
// min(d, n-d) staged blocks to member r-d and appends the same number received from r+d.
// At the end the staging array is rotated back into the output.
//
// Traffic: bytes_sent(r) = sum over rounds d = 1, 2, 4, ... < n of the bytes of staged blocks
// 0..min(d, n-d)-1, i.e. n-1 blocks in all: (n-1)/n * M with equal blocks.
#include <cstring>
#include <vector>

#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

void bruck_all_gather(Communicator& comm, const void* shard, void* output, size_t count,
                      DType dtype) {
  const int n = comm.size();
  const int r = comm.rank();
  const size_t es = dtype_size(dtype);
  Op op(comm, "all_gather", Algo::kRecursiveDoubling, count * es);

  // prefix[i] = bytes of staged blocks 0..i-1
  std::vector<size_t> prefix(static_cast<size_t>(n) + 1, 0);
  for (int i = 0; i < n; ++i)
    prefix[i + 1] = prefix[i] + block_of(count, n, mod(r + i, n)).count * es;
  std::byte* staged = comm.scratch(count * es);
  if (prefix[1]) std::memcpy(staged, shard, prefix[1]);

  uint32_t round = 0;
  for (int d = 1; d < n; d <<= 1, ++round) {
    const int blocks = d < n - d ? d : n - d;
    fabric::Request* rx =
        op.recv(mod(r + d, n), round, staged + prefix[d], prefix[d + blocks] - prefix[d]);
    fabric::Request* tx = op.send(mod(r - d, n), round, staged, prefix[blocks]);
    op.wait(rx, "Bruck round");
    op.wait(tx, "Bruck round");
  }
  auto* out = static_cast<std::byte*>(output);
  for (int i = 0; i < n; ++i) {
    const Block b = block_of(count, n, mod(r + i, n));
    if (b.count) std::memcpy(out + b.offset * es, staged + prefix[i], b.count * es);
  }
}

}  // namespace mics::comm
