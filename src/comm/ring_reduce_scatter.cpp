// Pipelined ring reduce-scatter.
//
// At step s = 0..n-2 member r sends the partial sum of block (r-s-1) mod n to its right and
// receives the partial sum of block (r-s-2) mod n from its left, adds its own input block and
// (unless it is the last step) forwards the result at the next step. After n-1 steps member r
// holds the full reduction of block r (layout.hpp). Chunked and windowed like the ring
// all-gather; received chunks land in a scratch copy of the array, so no receive ever waits
// for a send (no deadlock however small the window).
//
// Traffic: member r sends every block except its own: bytes_sent(r) = M - |block r|, which is
// (n-1)/n * M when n divides the count.
#include <algorithm>
#include <cstring>

#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"
#include "comm/ring_reduce.hpp"

namespace mics::comm {

namespace {
constexpr size_t kRecvWindow = 64;
// Staged receives (in-place all-reduce) land in this many chunk slots, few enough that a slot
// is still in cache when its partial is combined.
constexpr size_t kStagingSlots = 16;
}

void ring_reduce_phase(Communicator& comm, Op& op, const RingReduceBuffers& buf, size_t count,
                       DType dtype, ReduceOp reduce) {
  const int n = comm.size();
  const int r = comm.rank();
  const int right = mod(r + 1, n), left = mod(r - 1, n);
  const size_t es = dtype_size(dtype);

  std::vector<std::vector<Segment>> chunks(static_cast<size_t>(n));
  size_t max_chunks = 1, max_chunk_bytes = 0;
  for (int b = 0; b < n; ++b) {
    const Block blk = block_of(count, n, b);
    chunks[b] = chunk_range(blk.offset * es, blk.count * es, es);
    max_chunks = std::max(max_chunks, chunks[b].size());
    for (const auto& c : chunks[b]) max_chunk_bytes = std::max(max_chunk_bytes, c.bytes);
  }
  auto index = [&](int step, size_t c) { return static_cast<uint32_t>(step * max_chunks + c); };
  const size_t mine_offset = block_of(count, n, r).offset * es;
  const bool staged = buf.staging != nullptr;

  std::vector<fabric::Request*> sends;
  {
    const int sb = mod(r - 1, n);
    for (size_t c = 0; c < chunks[sb].size(); ++c)
      sends.push_back(
          op.send(right, index(0, c), buf.input + chunks[sb][c].offset, chunks[sb][c].bytes));
  }

  struct Pending {
    int step;
    size_t chunk;
    std::byte* landing;
    fabric::Request* request;
  };
  std::vector<Pending> posted;
  size_t next_wait = 0;
  int post_step = 0;
  size_t post_chunk = 0;
  auto post_more = [&] {
    const size_t window = staged ? kStagingSlots : kRecvWindow;
    while (post_step < n - 1 && posted.size() < next_wait + window) {
      const int rb = mod(r - post_step - 2, n);
      if (post_chunk >= chunks[rb].size()) {
        ++post_step;
        post_chunk = 0;
        continue;
      }
      const Segment& seg = chunks[rb][post_chunk];
      std::byte* landing = staged ? buf.staging + (posted.size() % kStagingSlots) * max_chunk_bytes
                                  : buf.accumulator + seg.offset;
      posted.push_back({post_step, post_chunk, landing,
                        op.recv(left, index(post_step, post_chunk), landing, seg.bytes)});
      ++post_chunk;
    }
  };
  post_more();
  while (next_wait < posted.size()) {
    Pending p = posted[next_wait];
    op.wait(p.request, "ring reduce-scatter step");
    const int rb = mod(r - p.step - 2, n);
    const Segment& seg = chunks[rb][p.chunk];
    const size_t elems = seg.bytes / es;
    const bool last = p.step == n - 2;
    std::byte* dst =
        last ? buf.final_block + (seg.offset - mine_offset) : buf.accumulator + seg.offset;
    // accumulated = received partial (op) our own input
    reduce_to(dst, p.landing, buf.input + seg.offset, elems, dtype, reduce);
    ++next_wait;
    if (!last) sends.push_back(op.send(right, index(p.step + 1, p.chunk), dst, seg.bytes));
    op.reap(sends);
    post_more();
  }
  op.wait_all(sends, "ring reduce-scatter sends");
}

size_t ring_staging_bytes() {
  return kStagingSlots * static_cast<size_t>(std::max<int64_t>(knobs_chunk_bytes(), 16));
}

void ring_reduce_scatter(Communicator& comm, const void* input, void* shard, size_t count,
                         DType dtype, ReduceOp reduce) {
  const size_t es = dtype_size(dtype);
  Op op(comm, "reduce_scatter", Algo::kRing, count * es);
  RingReduceBuffers buf;
  buf.input = static_cast<const std::byte*>(input);
  buf.accumulator = comm.scratch(count * es);
  buf.final_block = static_cast<std::byte*>(shard);
  ring_reduce_phase(comm, op, buf, count, dtype, reduce);
  if (reduce == ReduceOp::kAvg)
    scale(shard, block_of(count, comm.size(), comm.rank()).count, dtype, 1.0 / comm.size());
}

}  // namespace mics::comm
