#pragma once
// `--partition-size auto`: the smallest valid p whose per-rank memory fits a budget.
//
// Estimate per rank for partition size p (bytes):
//   model states  = 16 * P / p          fp32 master weights, gradient accumulator and the two
//                                       AdamW moments of this rank's shard (P parameters)
//   gather buffer = 4 * (U1 + U2)       the unit being computed and the one being prefetched
//                                       (U1 >= U2 the two largest units); with keep_gathered,
//                                       every unit's full parameters (4 * P)
//   + the caller's activation estimate (per micro-batch, it depends on the model)
// The smallest p that fits is the one with the least communication scale; if none fits the
// error says how much the largest valid p still needs.
#include <cstdint>
#include <string>
#include <vector>

namespace mics::topo {

struct MemoryEstimate {
  uint64_t parameters = 0;           // P, all units
  std::vector<uint64_t> unit_sizes;  // parameters per unit
  uint64_t activation_bytes = 0;     // per rank, from the model
  bool keep_gathered = false;
};

struct PartitionChoice {
  int partition_size = 0;
  uint64_t bytes_per_rank = 0;
  std::string explanation;  // one line per candidate p: the arithmetic, and the verdict
};

uint64_t bytes_per_rank(const MemoryEstimate& estimate, int partition_size);
// Throws mics::Error(kInvalidArgument) when even the largest valid p does not fit.
PartitionChoice choose_partition_size(const MemoryEstimate& estimate, uint64_t budget_bytes,
                                      int world_size, int ranks_per_node);

}  // namespace mics::topo
