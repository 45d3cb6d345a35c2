// Recursive-doubling all-reduce, for small messages (latency: ceil(log2 n) + 2 rounds).
//
// With p2 the largest power of two <= n and rem = n - p2: first, among members 0..2*rem-1,
// each even member sends its array to the odd member above it and sits out. The p2 remaining
// members exchange whole arrays with partners at distance 1, 2, 4, ... combining each time.
// Finally each odd member among the first 2*rem sends the result back to its even neighbour.
// Pairwise combines are commutative, so every member ends with bit-identical results.
//
// Traffic (M bytes): an even member r < 2*rem sends M; an odd member r < 2*rem sends
// (log2(p2) + 1) * M; every other member sends log2(p2) * M.
#include <cstring>

#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

void rd_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype,
                   ReduceOp reduce, const char* op_name) {
  const int n = comm.size();
  const int r = comm.rank();
  const size_t bytes = count * dtype_size(dtype);
  auto* out = static_cast<std::byte*>(output);
  if (input != output && bytes) std::memcpy(out, input, bytes);
  Op op(comm, op_name, Algo::kRecursiveDoubling, bytes);
  std::byte* incoming = comm.scratch(bytes);

  const PowerOfTwoFold fold = power_of_two_fold(n, r);
  const int p2 = fold.p2, rem = fold.rem, virtual_rank = fold.virtual_rank;
  uint32_t round = 0;

  if (r < 2 * rem) {
    if (virtual_rank < 0) {
      op.wait(op.send(r + 1, round, out, bytes), "handing the array to the odd neighbour");
    } else {
      op.wait(op.recv(r - 1, round, incoming, bytes), "receiving the even neighbour's array");
      reduce_into(out, incoming, count, dtype, reduce);
    }
  }
  ++round;

  if (virtual_rank >= 0) {
    for (int mask = 1; mask < p2; mask <<= 1, ++round) {
      const int partner = fold.member_of(virtual_rank ^ mask);
      fabric::Request* rx = op.recv(partner, round, incoming, bytes);
      fabric::Request* tx = op.send(partner, round, out, bytes);
      op.wait(rx, "recursive-doubling exchange");
      op.wait(tx, "recursive-doubling exchange");
      reduce_into(out, incoming, count, dtype, reduce);
    }
  }

  if (r < 2 * rem) {
    const uint32_t last = 1 + static_cast<uint32_t>(__builtin_ctz(static_cast<unsigned>(p2)));
    if (r % 2 == 1)
      op.wait(op.send(r - 1, last, out, bytes), "returning the result");
    else
      op.wait(op.recv(r + 1, last, out, bytes), "receiving the result");
  }
  if (reduce == ReduceOp::kAvg) scale(out, count, dtype, 1.0 / n);
}

}  // namespace mics::comm
