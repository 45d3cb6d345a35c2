#include "topo/groups.hpp"

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"

namespace mics::topo {

const char* to_string(Strategy s) {
  switch (s) {
    case Strategy::kDdp: return "ddp";
    case Strategy::kZero3: return "zero3";
    case Strategy::kMics: return "mics";
  }
  return "?";
}

Strategy parse_strategy(const std::string& name) {
  if (name == "ddp") return Strategy::kDdp;
  if (name == "zero3") return Strategy::kZero3;
  if (name == "mics") return Strategy::kMics;
  throw Error(ErrorKind::kInvalidArgument, fmt::format("unknown strategy '{}'", name),
              {.layer = "topo", .hint = "use ddp, zero3 or mics"});
}

std::vector<int> valid_partition_sizes(int world_size, int ranks_per_node) {
  std::vector<int> valid;
  for (int p = 1; p <= world_size; ++p) {
    if (world_size % p != 0) continue;
    if (ranks_per_node > 0 && ranks_per_node % p != 0 && p % ranks_per_node != 0) continue;
    valid.push_back(p);
  }
  return valid;
}

int resolve_partition_size(Strategy strategy, int requested, int world_size, int ranks_per_node) {
  if (strategy == Strategy::kDdp) return 1;
  if (strategy == Strategy::kZero3) return world_size;
  const int p = requested > 0 ? requested : (ranks_per_node > 0 ? ranks_per_node : world_size);
  const auto valid = valid_partition_sizes(world_size, ranks_per_node);
  for (int v : valid)
    if (v == p) return p;
  std::vector<std::string> listed;
  for (int v : valid) listed.push_back(std::to_string(v));
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("partition size {} does not fit {} ranks with {} per node", p,
                          world_size, ranks_per_node),
              {.layer = "topo", .where = "choosing the MiCS partition size",
               .hint = fmt::format("p must divide the world size and divide or be a multiple of "
                                   "the ranks per node; valid here: {}",
                                   join(listed, ", "))});
}

Groups build_groups(comm::Communicator& world, int partition_size) {
  Groups g;
  const int n = world.size(), me = world.rank();
  MICS_CHECK(partition_size > 0 && n % partition_size == 0, "partition size must divide the world");
  g.partition_size = partition_size;
  g.replicas = n / partition_size;
  g.partition = world.split(me / partition_size, me % partition_size,
                            fmt::format("partition{}(p={})", me / partition_size, partition_size));
  g.replication = world.split(me % partition_size, me / partition_size,
                              fmt::format("replication{}(r={})", me % partition_size, g.replicas));
  return g;
}

}  // namespace mics::topo
