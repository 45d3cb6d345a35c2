#include "comm/traffic_model.hpp"

#include <algorithm>

#include "comm/layout.hpp"

namespace mics::comm {

namespace {

struct Counter {
  const Communicator& comm;
  Traffic t;
  void send(int member, uint64_t bytes) {
    const int rail = static_cast<int>(comm.transport().rail_to(comm.global_rank(member)));
    t.bytes_sent[rail] += bytes;  // messages (chunks) are not modelled: msgs_sent stays 0
  }
};

uint64_t block_bytes(size_t count, int n, int i, size_t es) { return block_of(count, n, mod(i, n)).count * es; }

void ring_all_gather(Counter& c, size_t count, size_t es) {
  const int n = c.comm.size(), r = c.comm.rank();
  c.send(mod(r + 1, n), count * es - block_bytes(count, n, r + 1, es));
}

void bruck_all_gather(Counter& c, size_t count, size_t es) {
  const int n = c.comm.size(), r = c.comm.rank();
  for (int d = 1; d < n; d <<= 1) {
    uint64_t bytes = 0;
    for (int j = 0; j < std::min(d, n - d); ++j) bytes += block_bytes(count, n, r + j, es);
    c.send(mod(r - d, n), bytes);
  }
}

void hierarchical_all_gather(Counter& c, size_t count, size_t es) {
  const Communicator& comm = c.comm;
  const int p = comm.size(), nl = comm.members_per_node(), k = p / nl;
  const int a = comm.rank() / nl, l = comm.rank() % nl;
  uint64_t stage1 = 0, stage2 = 0;
  for (int node = 0; node < k; ++node)
    if (node != mod(a + 1, k)) stage1 += block_bytes(count, p, node * nl + l, es);
  for (int local = 0; local < nl; ++local)
    if (local != mod(l + 1, nl))
      for (int node = 0; node < k; ++node) stage2 += block_bytes(count, p, node * nl + local, es);
  c.send(mod(a + 1, k) * nl + l, stage1);       // the next node, same local index
  c.send(a * nl + mod(l + 1, nl), stage2);      // the next rank of this node
}

void rd_all_reduce(Counter& c, size_t count, size_t es) {
  const int r = c.comm.rank();
  const uint64_t bytes = count * es;
  const PowerOfTwoFold f = power_of_two_fold(c.comm.size(), r);
  if (f.virtual_rank < 0) return c.send(r + 1, bytes);
  for (int mask = 1; mask < f.p2; mask <<= 1) c.send(f.member_of(f.virtual_rank ^ mask), bytes);
  if (r < 2 * f.rem) c.send(r - 1, bytes);
}

// hd_all_reduce.cpp: halving sends M minus the member's own block, doubling the blocks it holds
// at each step; the folded pairs as in rd_all_reduce.
void hd_all_reduce(Counter& c, size_t count, size_t es) {
  const int r = c.comm.rank();
  const uint64_t bytes = count * es;
  const PowerOfTwoFold f = power_of_two_fold(c.comm.size(), r);
  if (f.virtual_rank < 0) return c.send(r + 1, bytes);
  const int v = f.virtual_rank;
  auto range_bytes = [&](int lo, int hi) {
    uint64_t b = 0;
    for (int i = lo; i < hi; ++i) b += block_of(count, f.p2, i).count * es;
    return b;
  };
  int lo = 0, hi = f.p2;
  for (int mask = f.p2 / 2; mask >= 1; mask /= 2) {
    const int mid = lo + (hi - lo) / 2;
    const bool lower = (v & mask) == 0;
    c.send(f.member_of(v ^ mask), lower ? range_bytes(mid, hi) : range_bytes(lo, mid));
    (lower ? hi : lo) = mid;
  }
  for (int mask = 1; mask < f.p2; mask *= 2) {
    c.send(f.member_of(v ^ mask), range_bytes(lo, hi));
    const int width = hi - lo;
    if ((v & mask) != 0) lo -= width;
    hi = lo + 2 * width;
  }
  if (r < 2 * f.rem) c.send(r - 1, bytes);
}

}  // namespace

Traffic predict_traffic(const Communicator& comm, const std::string& op, size_t count, DType dtype,
                        Algo algo) {
  Counter c{comm, {}};
  if (comm.size() == 1) return c.t;
  const size_t es = dtype_size(dtype);
  const int n = comm.size(), r = comm.rank();
  const Algo used = comm.choose(op.c_str(), count * es, algo);
  if (op == "all_gather") {
    if (used == Algo::kRecursiveDoubling) bruck_all_gather(c, count, es);
    else if (used == Algo::kHierarchical) hierarchical_all_gather(c, count, es);
    else ring_all_gather(c, count, es);
  } else if (op == "reduce_scatter") {
    if (used == Algo::kRecursiveDoubling) rd_all_reduce(c, count, es);
    else c.send(mod(r + 1, n), count * es - block_bytes(count, n, r, es));
  } else if (op == "all_reduce") {
    if (used == Algo::kRecursiveDoubling) {
      rd_all_reduce(c, count, es);
    } else if (used == Algo::kHalvingDoubling) {
      hd_all_reduce(c, count, es);
    } else {
      c.send(mod(r + 1, n), count * es - block_bytes(count, n, r, es));
      c.send(mod(r + 1, n), count * es - block_bytes(count, n, r + 1, es));
    }
  }
  return c.t;
}

}  // namespace mics::comm
