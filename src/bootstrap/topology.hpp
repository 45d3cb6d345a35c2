#pragma once
// Ranks -> nodes. A node is whatever the ranks' node keys say (hostname, Slurm node id, or the
// launcher's emulated MICS_NODE_ID): ranks with the same key share memory and talk over the
// intra-node rail; all other pairs cross the network rail.
#include <string>
#include <vector>

namespace mics::bootstrap {

struct Topology {
  int world_size = 1;
  int num_nodes = 1;
  std::vector<int> node_of;        // node index of each rank (nodes numbered by first rank)
  std::vector<int> local_rank_of;  // index of each rank among its node's ranks
  std::vector<std::string> node_names;

  // Builds the topology from every rank's node key, indexed by rank.
  static Topology from_node_keys(const std::vector<std::string>& node_keys);
  // n ranks per node when every node has the same count and holds a contiguous block of
  // ranks; 0 otherwise.
  int uniform_ranks_per_node() const;
  bool same_node(int a, int b) const { return node_of[a] == node_of[b]; }
  std::string describe() const;  // "8 ranks on 2 nodes (4 per node)"
};

}  // namespace mics::bootstrap
