// Pipelined ring all-gather.
//
// Members form a ring (member m sends to m+1, receives from m-1). At step s = 0..n-2, member
// r forwards contribution (r-s) mod n and receives contribution (r-s-1) mod n, straight into
// its place in the output. Contributions larger than MICS_GATHER_CHUNK_BYTES are cut into
// chunks, each forwarded as soon as it arrives, and up to a window of receives stay posted.
//
// Traffic: member r sends every contribution except that of member r+1:
//   bytes_sent(r) = total - |contribution (r+1) mod n|; with equal shards of B bytes,
//   (n-1)*B = (n-1)/n * M for a gathered array of M bytes.
#include <algorithm>
#include <cstring>

#include "base/knobs.hpp"
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

namespace {
constexpr size_t kRecvWindow = 64;
}

void ring_all_gather_segments(Communicator& comm, const char* op_name, std::byte* output,
                              const std::byte* own_input,
                              const std::vector<std::vector<Segment>>& contributions) {
  const int n = comm.size();
  const int r = comm.rank();
  const int right = mod(r + 1, n), left = mod(r - 1, n);

  // Chunks of each contribution, in output coordinates. Sender and receiver cut the same
  // contribution the same way, so (step, chunk) identifies a message on both sides.
  // Whole blocks per message (up to MICS_GATHER_CHUNK_BYTES): with nothing to reduce there is
  // nothing to overlap inside a step, and every extra message is a handshake that needs the
  // neighbour scheduled (costly when ranks share cores).
  const size_t gather_chunk = static_cast<size_t>(knobs().gather_chunk_bytes);
  std::vector<std::vector<Segment>> chunks(static_cast<size_t>(n));
  size_t total = 0, max_chunks = 1;
  for (int m = 0; m < n; ++m) {
    for (const auto& seg : contributions[m]) {
      total += seg.bytes;
      for (const auto& c : chunk_range(seg.offset, seg.bytes, 1, gather_chunk))
        chunks[m].push_back(c);
    }
    max_chunks = std::max(max_chunks, chunks[m].size());
  }
  Op op(comm, op_name, Algo::kRing, total);
  MICS_CHECK(static_cast<size_t>(n) * max_chunks <= Op::kMaxIndex, "too many chunks for the tag");
  auto index = [&](int step, size_t c) { return static_cast<uint32_t>(step * max_chunks + c); };

  std::vector<fabric::Request*> sends;
  // Step 0: our own contribution, from the input buffer when it is not in the output yet.
  {
    const auto& mine = chunks[r];
    size_t in_offset = 0;
    for (size_t c = 0; c < mine.size(); ++c) {
      const std::byte* src = own_input ? own_input + in_offset : output + mine[c].offset;
      sends.push_back(op.send(right, index(0, c), src, mine[c].bytes));
      in_offset += mine[c].bytes;
    }
    if (own_input) {
      size_t off = 0;
      for (const auto& seg : contributions[r]) {
        if (seg.bytes && output + seg.offset != own_input + off)
          std::memcpy(output + seg.offset, own_input + off, seg.bytes);
        off += seg.bytes;
      }
    }
  }

  // Receives in (step, chunk) order, a window ahead of the one we wait for.
  struct Pending {
    int step;
    size_t chunk;
    fabric::Request* request;
  };
  std::vector<Pending> posted;
  size_t next_post = 0, next_wait = 0;
  int post_step = 0;
  size_t post_chunk = 0;
  auto post_more = [&] {
    while (post_step < n - 1 && next_post < next_wait + kRecvWindow) {
      const int from = mod(r - post_step - 1, n);
      const auto& list = chunks[from];
      if (post_chunk >= list.size()) {
        ++post_step;
        post_chunk = 0;
        continue;
      }
      const Segment& seg = list[post_chunk];
      posted.push_back(
          {post_step, post_chunk,
           op.recv(left, index(post_step, post_chunk), output + seg.offset, seg.bytes)});
      ++post_chunk;
      ++next_post;
    }
  };
  post_more();
  while (next_wait < posted.size()) {
    Pending p = posted[next_wait];
    op.wait(p.request, "ring all-gather step");
    ++next_wait;
    if (p.step < n - 2) {
      const Segment& seg = chunks[mod(r - p.step - 1, n)][p.chunk];
      sends.push_back(op.send(right, index(p.step + 1, p.chunk), output + seg.offset, seg.bytes));
    }
    op.reap(sends);
    post_more();
  }
  op.wait_all(sends, "ring all-gather sends");
}

void ring_all_gather(Communicator& comm, const void* shard, void* output, size_t count,
                     DType dtype) {
  const size_t es = dtype_size(dtype);
  const int n = comm.size();
  std::vector<std::vector<Segment>> contributions(static_cast<size_t>(n));
  for (int m = 0; m < n; ++m) {
    const Block b = block_of(count, n, m);
    contributions[m].push_back({b.offset * es, b.count * es});
  }
  auto* out = static_cast<std::byte*>(output);
  const auto* in = static_cast<const std::byte*>(shard);
  const Block mine = block_of(count, n, comm.rank());
  ring_all_gather_segments(comm, "all_gather", out, in == out + mine.offset * es ? nullptr : in,
                           contributions);
}

}  // namespace mics::comm
