#pragma once
// Collective times in the alpha-beta model, per rail.
//
// One rail (latency alpha per hop, bandwidth bw), ring algorithms over n members, M = the whole
// array in bytes (all-gather: the gathered result; reduce-scatter and all-reduce: the input):
//   all-gather, reduce-scatter:  (n-1) * alpha + (n-1)/n * M / bw
//   all-reduce:                2*(n-1) * alpha + 2*(n-1)/n * M / bw
//
// A group of ranks on several nodes: a ring laid out node by node has one edge leaving every
// node, carrying (n-1)/n * M over the collective (2x for all-reduce). When c such groups run at
// once on a node (c = the ranks of the node divided by the group's members on it) they share
// the node's network, so the edge runs at min(intra bw per GPU, inter bw per node / c), and a
// hop costs the inter-node latency. A group inside a node uses the intra-node rail.
//
// MiCS hierarchical all-gather over a partition group of p = k*n ranks on k nodes (DESIGN.md):
//   stage 1: n concurrent all-gathers over the k ranks with the same local index, M/n each,
//            over the network (the node's egress is (k-1)/k * M)
//   stage 2: an all-gather of M over the node's n ranks, over the intra-node rail
// 2-hop all-reduce: the shard (M/p) over the replication group of r = N/p ranks.
#include "plan/catalog.hpp"

namespace mics::plan {

struct CostParams {
  double compute_efficiency = 0.5;  // achieved / peak FLOP/s in the model's compute
  double intra_efficiency = 0.8;    // achieved / nominal intra-node bandwidth
  double inter_efficiency = 0.8;    // achieved / nominal inter-node bandwidth
  double latency_scale = 1.0;       // multiplies both rails' per-hop latency
  // Seconds added to every hop on either rail (a CPU host's scheduling wait, when one wants to
  // model it: --host-hop-us). 0 by default; --calibrate fits it only where the host has a core
  // per rank (on a CPU-bound host one step time cannot tell it from the compute rate).
  double host_hop_s = 0.0;
};

enum class Collective { kAllGather, kReduceScatter, kAllReduce };

// The closed forms on one rail.
double ring_time(Collective op, int n, double bytes, const Rail& rail);

// Where a group's members sit.
struct GroupShape {
  int size = 1;                 // members
  int per_node = 1;             // members on each of its nodes
  int concurrent_per_node = 1;  // groups of this kind sharing a node's network at once
};

class CollectiveModel {
 public:
  CollectiveModel(const Cluster& cluster, const CostParams& params, int world);
  int ranks_per_node() const { return n_; }
  const Rail& intra() const { return intra_; }  // after the efficiencies
  const Rail& inter() const { return inter_; }

  // A ring collective over a group of this shape.
  double ring(Collective op, const GroupShape& group, double bytes) const;

  // The shapes of MiCS's groups for partition size p.
  GroupShape partition_group(int p) const;
  GroupShape replication_group(int p) const;

  // All-gather of M bytes inside a partition group of p: hierarchical (two stages) when the
  // group spans several nodes of several ranks, else a ring.
  double hierarchical_all_gather(int p, double bytes) const;
  double partition_all_gather(int p, double bytes, bool hierarchical) const;
  double partition_reduce_scatter(int p, double bytes) const;
  // The 2-hop all-reduce of the shard, shard_bytes = M/p, across the replication group.
  double replication_all_reduce(int p, double shard_bytes) const;

 private:
  int world_, n_;
  Rail intra_, inter_;
};

}  // namespace mics::plan
