// The MiCS hierarchical all-gather over a communicator that spans k nodes of n members each
// (members numbered node by node: member a*n + l is local index l on node a).
//
// Stage 1 (network): the k members with the same local index l all-gather their shards,
// blocks (a*n + l) for a = 0..k-1, over the cross-node communicator.
// Stage 2 (same node): the node's n members all-gather what stage 1 gave them; member l's
// contribution is the k blocks (a*n + l), written straight into their final places, so the
// result is byte for byte the flat all-gather's and no re-arranging copy is needed.
//
// Traffic with equal blocks of B = M/p bytes (p = k*n): each member sends (k-1)*B over the
// network and (n-1)*k*B inside the node. Per node the network carries n*(k-1)*B =
// (k-1)/k * M, against (p-1)/p * M for a flat ring across the same nodes.
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"

namespace mics::comm {

void hierarchical_all_gather(Communicator& comm, const void* shard, void* output, size_t count,
                             DType dtype) {
  const int p = comm.size();
  const int n = comm.members_per_node();
  const int k = p / n;
  const int a = comm.rank() / n, l = comm.rank() % n;
  const size_t es = dtype_size(dtype);
  auto block_segment = [&](int member) {
    const Block b = block_of(count, p, member);
    return Segment{b.offset * es, b.count * es};
  };
  auto* out = static_cast<std::byte*>(output);
  const auto* in = static_cast<const std::byte*>(shard);
  const Segment mine = block_segment(comm.rank());

  std::vector<std::vector<Segment>> stage1(static_cast<size_t>(k));
  for (int node = 0; node < k; ++node) stage1[node].push_back(block_segment(node * n + l));
  ring_all_gather_segments(comm.cross_node(), "all_gather", out,
                           in == out + mine.offset ? nullptr : in, stage1);
  (void)a;

  std::vector<std::vector<Segment>> stage2(static_cast<size_t>(n));
  for (int local = 0; local < n; ++local)
    for (int node = 0; node < k; ++node) stage2[local].push_back(block_segment(node * n + local));
  ring_all_gather_segments(comm.same_node(), "all_gather", out, nullptr, stage2);
}

}  // namespace mics::comm
