// Ring all-reduce: the ring reduce-scatter phase forming partial sums in the output, then the
// ring all-gather of the reduced blocks in place.
//
// Traffic: bytes_sent(r) = (M - |block r|) + (M - |block (r+1) mod n|), i.e. 2(n-1)/n * M when
// n divides the count.
#include <cstring>

#include "base/knobs.hpp"
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/ring_reduce.hpp"

namespace mics::comm {

int64_t knobs_chunk_bytes() {
  return knobs().chunk_bytes;
}

void ring_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype,
                     ReduceOp reduce) {
  const size_t es = dtype_size(dtype);
  const int n = comm.size();
  auto* out = static_cast<std::byte*>(output);
  const Block mine = block_of(count, n, comm.rank());
  {
    Op op(comm, "all_reduce", Algo::kRing, count * es);
    RingReduceBuffers buf;
    // Out of place, partials land straight in the output (nothing there to keep yet) and are
    // combined with the input: no copy of the input and no staging. In place, received
    // partials must not overwrite the input, so they land in a small window of slots.
    buf.input = static_cast<const std::byte*>(input);
    buf.accumulator = out;
    buf.final_block = out + mine.offset * es;
    buf.staging = input == output ? comm.scratch(ring_staging_bytes()) : nullptr;
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
