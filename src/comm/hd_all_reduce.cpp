// Halving-doubling all-reduce (Rabenseifner's): a reduce-scatter by recursive halving, then an
// all-gather by recursive doubling. It moves the ring's bytes in 2*log2(p2) steps instead of the
// ring's 2(n-1): where a step's latency matters (many members, mid-size arrays, a high-latency
// fabric), fewer steps, the same bandwidth.
//
// With p2 the largest power of two <= n and rem = n - p2, the first 2*rem members fold in pairs
// as in rd_all_reduce.cpp (each even one hands its array to the odd one above it, sits out, and
// gets the result back at the end); the p2 remaining members are virtual ranks v = 0..p2-1 and
// the array is cut into p2 blocks (layout.hpp's block_of over p2). Halving: with the range of
// blocks [lo, hi) a member still reduces (first all of them), at mask = p2/2, p2/4, ..., 1 it
// keeps the half that holds block v, sends the other half of its partial sums to v ^ mask and
// adds what v ^ mask sends for the kept half. It ends with block v fully reduced. Doubling: at
// mask = 1, 2, ..., p2/2 it sends the blocks it has to v ^ mask and receives the neighbouring
// range of the same size. Every block is reduced by one member, so all end bit-identical.
// Each step's transfer goes in chunks of MICS_CHUNK_BYTES, reduced as they arrive.
//
// Traffic (M bytes, R_k(v) = the bytes of the 2^k blocks aligned to 2^k that hold block v):
// every virtual rank sends (M - R_0(v)) while halving and R_0(v) + R_1(v) + ... + R_{log2 p2 - 1}(v)
// while doubling, i.e. 2(p2-1)/p2 * M when p2 divides the count; an even member r < 2*rem sends M;
// an odd member r < 2*rem sends that of virtual rank r/2, plus M (the result handed back).
#include <algorithm>
#include <cstring>

#include "base/knobs.hpp"
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

namespace {

// Bytes [offset, offset + bytes) of blocks [lo, hi) of count elements cut into p2 blocks.
Segment block_range(size_t count, int p2, int lo, int hi, size_t es) {
  const size_t begin = block_of(count, p2, lo).offset;
  const Block last = block_of(count, p2, hi - 1);
  return {begin * es, (last.offset + last.count - begin) * es};
}

}  // namespace

void hd_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype,
                   ReduceOp reduce) {
  const int n = comm.size();
  const int r = comm.rank();
  const size_t es = dtype_size(dtype);
  const size_t bytes = count * es;
  auto* out = static_cast<std::byte*>(output);
  if (input != output && bytes) std::memmove(out, input, bytes);
  Op op(comm, "all_reduce", Algo::kHalvingDoubling, bytes);

  const PowerOfTwoFold fold = power_of_two_fold(n, r);
  const int p2 = fold.p2, rem = fold.rem;
  const int steps = __builtin_ctz(static_cast<unsigned>(p2));  // log2(p2)
  const size_t chunk = static_cast<size_t>(std::max<int64_t>(knobs().chunk_bytes, 16));
  // Message index = round * per_round + chunk: rounds are the fold, the halving and doubling
  // steps and the return; no transfer has more chunks than the whole array.
  const uint32_t per_round = static_cast<uint32_t>(chunk_range(0, bytes, es, chunk).size() + 1);
  auto index = [&](int round, size_t c) { return static_cast<uint32_t>(round) * per_round + static_cast<uint32_t>(c); };
  const int last_round = 1 + 2 * steps;

  auto send_range = [&](int member, int round, const Segment& s, std::vector<fabric::Request*>& sends) {
    const auto pieces = chunk_range(s.offset, s.bytes, es, chunk);
    for (size_t c = 0; c < pieces.size(); ++c)
      sends.push_back(op.send(member, index(round, c), out + pieces[c].offset, pieces[c].bytes));
  };
  // Receives s from member into `landing` (+ each piece's offset - s.offset); calls done(piece)
  // as each piece arrives.
  auto recv_range = [&](int member, int round, const Segment& s, std::byte* landing, auto done) {
    const auto pieces = chunk_range(s.offset, s.bytes, es, chunk);
    std::vector<fabric::Request*> recvs;
    recvs.reserve(pieces.size());
    for (size_t c = 0; c < pieces.size(); ++c)
      recvs.push_back(op.recv(member, index(round, c), landing + (pieces[c].offset - s.offset), pieces[c].bytes));
    for (size_t c = 0; c < pieces.size(); ++c) {
      op.wait(recvs[c], "halving-doubling exchange");
      done(pieces[c]);
    }
  };
  std::vector<fabric::Request*> sends;
  const Segment whole{0, bytes};
  std::byte* incoming = comm.scratch(bytes);  // partial sums received, then reduced into out

  // Fold the first 2*rem members in pairs.
  const int v = fold.virtual_rank;
  if (r < 2 * rem) {
    if (v < 0) {
      send_range(r + 1, 0, whole, sends);
      op.wait_all(sends, "handing the array to the odd neighbour");
    } else {
      recv_range(r - 1, 0, whole, incoming, [&](const Segment& p) {
        reduce_into(out + p.offset, incoming + p.offset, p.bytes / es, dtype, reduce);
      });
    }
  }

  if (v >= 0) {  // n >= 2 here, so p2 >= 2
    int lo = 0, hi = p2, round = 1;
    for (int mask = p2 / 2; mask >= 1; mask /= 2, ++round) {  // halving: reduce-scatter
      const int partner = fold.member_of(v ^ mask), mid = lo + (hi - lo) / 2;
      const bool lower = (v & mask) == 0;
      const Segment give = lower ? block_range(count, p2, mid, hi, es) : block_range(count, p2, lo, mid, es);
      const Segment keep = lower ? block_range(count, p2, lo, mid, es) : block_range(count, p2, mid, hi, es);
      send_range(partner, round, give, sends);
      recv_range(partner, round, keep, incoming, [&](const Segment& p) {
        reduce_into(out + p.offset, incoming + (p.offset - keep.offset), p.bytes / es, dtype, reduce);
      });
      op.wait_all(sends, "halving-doubling sends");  // the doubling writes over what was sent
      (lower ? hi : lo) = mid;
    }
    if (reduce == ReduceOp::kAvg) {
      const Segment mine = block_range(count, p2, v, v + 1, es);
      scale(out + mine.offset, mine.bytes / es, dtype, 1.0 / n);
    }
    for (int mask = 1; mask < p2; mask *= 2, ++round) {  // doubling: all-gather
      const int partner = fold.member_of(v ^ mask), width = hi - lo;
      const bool lower = (v & mask) == 0;
      const int plo = lower ? hi : lo - width;
      const Segment theirs = block_range(count, p2, plo, plo + width, es);
      send_range(partner, round, block_range(count, p2, lo, hi, es), sends);
      recv_range(partner, round, theirs, out + theirs.offset, [](const Segment&) {});
      op.wait_all(sends, "halving-doubling sends");
      lo = std::min(lo, plo);
      hi = lo + 2 * width;
    }
  }

  // Hand the result back to the folded even members.
  if (r < 2 * rem) {
    if (v >= 0) {
      send_range(r - 1, last_round, whole, sends);
      op.wait_all(sends, "returning the result");
    } else {
      recv_range(r + 1, last_round, whole, out, [](const Segment&) {});
    }
  }
}

}  // namespace mics::comm
