#pragma once
// MiCS groups: how N ranks split into partition groups (contiguous blocks of p ranks, each
// holding one full copy of the model states sharded p ways) and replication groups (the
// r = N/p ranks with the same index in every partition group). DDP is p = 1, ZeRO-3 p = N.
//
// p must divide N, and p must divide the ranks per node n or n must divide p: then a
// partition group is either inside one node or a whole number of nodes, which is what the
// hierarchical all-gather and the per-rail traffic formulas assume.
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace mics::topo {

enum class Strategy { kDdp, kZero3, kMics };
const char* to_string(Strategy s);
Strategy parse_strategy(const std::string& name);  // ddp, zero3, mics; throws on others

// Every valid p for this world, ascending.
std::vector<int> valid_partition_sizes(int world_size, int ranks_per_node);
// The partition size a strategy uses: ddp 1, zero3 N, mics the requested p (0: one node,
// p = n). Throws kInvalidArgument listing the valid values when p is not one of them.
int resolve_partition_size(Strategy strategy, int requested, int world_size, int ranks_per_node);

struct Groups {
  int partition_size = 1;    // p
  int replicas = 1;          // r = N / p
  std::unique_ptr<comm::Communicator> partition;    // my partition group (size p)
  std::unique_ptr<comm::Communicator> replication;  // my replication group (size r)
};

// Collective over `world`.
Groups build_groups(comm::Communicator& world, int partition_size);

}  // namespace mics::topo
