// Alpha-beta collective times (see collective_model.hpp for the formulas).
#include "plan/collective_model.hpp"

#include <algorithm>

#include "base/error.hpp"

namespace mics::plan {

double ring_time(Collective op, int n, double bytes, const Rail& rail) {
  if (n <= 1 || bytes <= 0) return 0;
  const double hops = op == Collective::kAllReduce ? 2.0 * (n - 1) : n - 1.0;
  return hops * rail.latency + hops / n * bytes / rail.bandwidth;
}

CollectiveModel::CollectiveModel(const Cluster& cluster, const CostParams& params, int world)
    : world_(world), n_(std::max(1, std::min(world, cluster.gpus_per_node))) {
  MICS_CHECK(world >= 1, "world size must be >= 1");
  intra_ = Rail{cluster.intra.bandwidth * params.intra_efficiency,
                cluster.intra.latency * params.latency_scale + params.host_hop_s};
  inter_ = Rail{cluster.inter.bandwidth * params.inter_efficiency,
                cluster.inter.latency * params.latency_scale + params.host_hop_s};
}

double CollectiveModel::ring(Collective op, const GroupShape& g, double bytes) const {
  if (g.size <= 1) return 0;
  if (g.size <= g.per_node) return ring_time(op, g.size, bytes, intra_);
  const Rail edge{std::min(intra_.bandwidth, inter_.bandwidth / std::max(1, g.concurrent_per_node)), inter_.latency};
  return ring_time(op, g.size, bytes, edge);
}

GroupShape CollectiveModel::partition_group(int p) const {
  // Contiguous blocks of p: inside a node when p <= n (n/p groups per node, each on its own
  // GPUs' links), else k = p/n whole nodes (one group per node).
  if (p <= n_) return GroupShape{p, p, n_ / p};
  return GroupShape{p, n_, 1};
}

GroupShape CollectiveModel::replication_group(int p) const {
  const int r = world_ / p;
  // Ranks p apart: one per node when p >= n (n groups share a node), else n/p per node (p groups).
  if (p >= n_) return GroupShape{r, 1, n_};
  return GroupShape{r, n_ / p, p};
}

double CollectiveModel::hierarchical_all_gather(int p, double bytes) const {
  if (p <= n_ || n_ == 1) return ring(Collective::kAllGather, partition_group(p), bytes);
  const int k = p / n_;
  const double stage1 = ring(Collective::kAllGather, GroupShape{k, 1, n_}, bytes / n_);
  const double stage2 = ring_time(Collective::kAllGather, n_, bytes, intra_);
  return stage1 + stage2;
}

double CollectiveModel::partition_all_gather(int p, double bytes, bool hierarchical) const {
  return hierarchical ? hierarchical_all_gather(p, bytes) : ring(Collective::kAllGather, partition_group(p), bytes);
}

double CollectiveModel::partition_reduce_scatter(int p, double bytes) const {
  return ring(Collective::kReduceScatter, partition_group(p), bytes);
}

double CollectiveModel::replication_all_reduce(int p, double shard_bytes) const {
  return ring(Collective::kAllReduce, replication_group(p), shard_bytes);
}

}  // namespace mics::plan
