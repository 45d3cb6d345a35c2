// Ring all-reduce: the ring reduce-scatter phase, in place in the output with received
// partials staged in a small window of slots, then the ring all-gather of the reduced blocks.
//
// Traffic: bytes_sent(r) = (M - |block r|) + (M - |block (r+1) mod n|), i.e. 2(n-1)/n * M when
// n divides the count.
#include <cstring>

#include "base/knobs.hpp"
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/ring_reduce.hpp"

namespace mics::comm {

int64_t knobs_chunk_bytes() { return knobs().chunk_bytes; }

void ring_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype,
                     ReduceOp reduce) {
  const size_t es = dtype_size(dtype);
  const int n = comm.size();
  auto* out = static_cast<std::byte*>(output);
  if (input != output && count) std::memcpy(out, input, count * es);
  const Block mine = block_of(count, n, comm.rank());
  {
    Op op(comm, "all_reduce", Algo::kRing, count * es);
    RingReduceBuffers buf;
    buf.input = out;
    buf.accumulator = out;
    buf.final_block = out + mine.offset * es;
    buf.staging = comm.scratch(ring_staging_bytes());
    ring_reduce_phase(comm, op, buf, count, dtype, reduce);
  }
  if (reduce == ReduceOp::kAvg) scale(out + mine.offset * es, mine.count, dtype, 1.0 / n);
  std::vector<std::vector<Segment>> contributions(static_cast<size_t>(n));
  for (int m = 0; m < n; ++m) {
    const Block b = block_of(count, n, m);
    contributions[m].push_back({b.offset * es, b.count * es});
  }
  ring_all_gather_segments(comm, "all_reduce", out, nullptr, contributions);
}

}  // namespace mics::comm
