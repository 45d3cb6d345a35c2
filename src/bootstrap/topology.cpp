#include "bootstrap/topology.hpp"

#include <map>

#include <fmt/format.h>

namespace mics::bootstrap {

Topology Topology::from_node_keys(const std::vector<std::string>& node_keys) {
  Topology t;
  t.world_size = static_cast<int>(node_keys.size());
  std::map<std::string, int> index;
  std::vector<int> count;
  for (const auto& key : node_keys) {
    auto [it, inserted] = index.emplace(key, static_cast<int>(t.node_names.size()));
    if (inserted) {
      t.node_names.push_back(key);
      count.push_back(0);
    }
    t.node_of.push_back(it->second);
    t.local_rank_of.push_back(count[it->second]++);
  }
  t.num_nodes = static_cast<int>(t.node_names.size());
  return t;
}

int Topology::uniform_ranks_per_node() const {
  if (world_size % num_nodes != 0) return 0;
  const int n = world_size / num_nodes;
  for (int r = 0; r < world_size; ++r)
    if (node_of[r] != r / n || local_rank_of[r] != r % n) return 0;
  return n;
}

std::string Topology::describe() const {
  const int n = uniform_ranks_per_node();
  return n ? fmt::format("{} ranks on {} node(s), {} per node", world_size, num_nodes, n)
           : fmt::format("{} ranks on {} node(s), uneven or interleaved", world_size, num_nodes);
}

}  // namespace mics::bootstrap
