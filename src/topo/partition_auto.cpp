#include "topo/partition_auto.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "topo/groups.hpp"

namespace mics::topo {

namespace {

uint64_t gather_bytes(const MemoryEstimate& e) {
  if (e.keep_gathered) return 4 * e.parameters;
  std::vector<uint64_t> sizes = e.unit_sizes;
  std::sort(sizes.rbegin(), sizes.rend());
  uint64_t two = 0;
  for (size_t i = 0; i < sizes.size() && i < 2; ++i) two += sizes[i];
  return 4 * two;
}

}  // namespace

uint64_t bytes_per_rank(const MemoryEstimate& e, int p) {
  return 16 * e.parameters / static_cast<uint64_t>(p) + gather_bytes(e) + e.activation_bytes;
}

PartitionChoice choose_partition_size(const MemoryEstimate& e, uint64_t budget, int world_size,
                                      int ranks_per_node) {
  PartitionChoice choice;
  for (int p : valid_partition_sizes(world_size, ranks_per_node)) {
    const uint64_t total = bytes_per_rank(e, p);
    const bool fits = total <= budget;
    choice.explanation += fmt::format(
        "  p={:<5} model states 16*{}/{} = {} + gather buffers {} + activations {} = {} {} "
        "budget {}\n",
        p, e.parameters, p, format_bytes(static_cast<double>(16 * e.parameters / p)),
        format_bytes(static_cast<double>(gather_bytes(e))),
        format_bytes(static_cast<double>(e.activation_bytes)), format_bytes(static_cast<double>(total)),
        fits ? "<=" : ">", format_bytes(static_cast<double>(budget)));
    if (fits) {
      choice.partition_size = p;
      choice.bytes_per_rank = total;
      choice.explanation += fmt::format("  -> p={}: the smallest partition that fits\n", p);
      return choice;
    }
  }
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("no partition size fits the memory budget of {} per rank",
                          format_bytes(static_cast<double>(budget))),
              {.layer = "topo", .where = "--partition-size auto",
               .hint = fmt::format("the candidates:\n{}raise the budget, add ranks, enable "
                                   "activation recomputation or shrink the micro-batch",
                                   choice.explanation)});
}

}  // namespace mics::topo
