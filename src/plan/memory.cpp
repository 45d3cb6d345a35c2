// Memory per rank: the engine's accounting, reproduced (see memory.hpp).
#include "plan/memory.hpp"

#include <fmt/format.h>

#include "model/gpt.hpp"
#include "topo/groups.hpp"

namespace mics::plan {

std::string bytes_text(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return fmt::format("{:.2f} {}", bytes, units[u]);
}

std::string MemoryPlan::describe() const {
  return fmt::format("states {} + gathered {} + gradients {} + activations {} = {}", bytes_text(model_states),
                     bytes_text(gathered), bytes_text(grad_buffers), bytes_text(activations), bytes_text(total()));
}

MemoryPlan memory_plan(const ModelDesc& model, const Cluster& cluster, int world, int p, int micro_batch, int seq_len,
                       bool recompute) {
  MemoryPlan m;
  m.partition_size = p;
  const uint64_t n = static_cast<uint64_t>(world);
  const auto padded = [n](uint64_t numel) { return (numel + n - 1) / n * n; };
  const auto sizes = model.unit_sizes();
  const uint64_t unit0 = sizes[0], block = sizes.size() > 1 ? sizes[1] : 0;
  for (uint64_t numel : sizes) m.model_states += 16 * (p == 1 ? numel : padded(numel) / static_cast<uint64_t>(p));
  const uint64_t elem = cluster.cpu_engine ? 4 : 2;
  // The MLP bench holds no unit through the pass: a layer and its prefetch, and one layer's
  // gradient buffer (every layer has the same size).
  const uint64_t held = model.is_mlp() ? 0 : unit0, working = model.is_mlp() ? unit0 : block;
  m.gathered = p == 1 ? 0 : elem * ((held ? padded(held) : 0) + 2 * padded(working));
  if (cluster.cpu_engine) {
    m.grad_buffers = 4 * (held + working);
    m.activations = model.engine_activation_bytes(micro_batch, seq_len, recompute);
  } else {
    m.grad_buffers = p == 1 ? 0 : 2 * (held + working);
    m.activations = model.gpu_activation_bytes(micro_batch, seq_len, recompute);
  }
  return m;
}

uint64_t memory_budget(const Cluster& cluster) { return static_cast<uint64_t>(cluster.memory_bytes * 0.9); }

PartitionChoice choose_partition_size(const ModelDesc& model, const Cluster& cluster, int world, int micro_batch,
                                      int seq_len, bool recompute) {
  PartitionChoice choice;
  const uint64_t budget = memory_budget(cluster);
  for (int p : topo::valid_partition_sizes(world, std::min(world, cluster.gpus_per_node))) {
    const MemoryPlan m = memory_plan(model, cluster, world, p, micro_batch, seq_len, recompute);
    const bool fits = m.total() <= budget;
    choice.explanation += fmt::format("  p={:<5} {}  {}\n", p, m.describe(),
                                      fits ? (choice.partition_size ? "fits" : "fits: chosen (smallest p that fits)")
                                           : fmt::format("over the budget {}", bytes_text(static_cast<double>(budget))));
    if (fits && !choice.partition_size) {
      choice.partition_size = p;
      choice.memory = m;
    }
  }
  return choice;
}

}  // namespace mics::plan
