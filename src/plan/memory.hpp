#pragma once
// Memory per rank for a strategy and partition size: what `mics plan` prints and what
// `--partition-size auto` compares with the accelerator's memory.
//
// Units are padded to a multiple of the world size N and cut into p shards, as shard/engine.cpp
// does (shard = ceil(numel / N) * N / p; with p = 1 the units stay unpadded and replicated).
//
// CPU engine (Cluster::cpu_engine, exactly `mics train`'s plan, train/trainer.cpp):
//   model states  16 * shard              fp32 master, gradient accumulator, 2 AdamW moments
//   gathered      4 * (padded(U0) + 2 * padded(block))   (p > 1) unit 0 held through the
//                                         backward, a block and its prefetch
//   gradients     4 * (U0 + block)        the full-size gradient of unit 0 and of one block
//   activations   model::Gpt::activation_bytes(B, T, recompute)
// The engine bench's MLP (mlpL..W.., every layer one unit of U parameters): gathered
//   4 * 2 * padded(U) (a layer and its prefetch), gradients 4 * U, activations
//   model::Mlp::activation_bytes(B).
// Accelerators, bf16 compute with fp32 master (DeepSpeed's count for ZeRO):
//   model states  16 * shard              2 (bf16 params) + 2 (bf16 grads) + 12 (fp32 master
//                                         and 2 moments) bytes per parameter of the shard
//   gathered      2 * (padded(U0) + 2 * padded(block))   (p > 1) bf16, as above
//   gradients     2 * (U0 + block)        (p > 1) full-size bf16 gradients before the
//                                         reduce-scatter; with p = 1 they are the states'
//   activations   ModelDesc::gpu_activation_bytes (Korthikanti et al.)
#include <cstdint>
#include <string>

#include "plan/catalog.hpp"
#include "plan/model_desc.hpp"

namespace mics::plan {

struct MemoryPlan {
  int partition_size = 1;
  uint64_t model_states = 0, gathered = 0, grad_buffers = 0, activations = 0;
  uint64_t total() const { return model_states + gathered + grad_buffers + activations; }
  std::string describe() const;  // "states X + gathered Y + gradients Z + activations W = T"
};

MemoryPlan memory_plan(const ModelDesc& model, const Cluster& cluster, int world, int partition_size, int micro_batch,
                       int seq_len, bool recompute);

// The budget `auto` fits into: 90% of the accelerator's memory (the rest for the framework,
// the allocator's fragmentation and communication buffers).
uint64_t memory_budget(const Cluster& cluster);

struct PartitionChoice {
  int partition_size = 0;  // 0: none fits
  MemoryPlan memory;
  std::string explanation;  // one line per valid p: the arithmetic and the verdict
};
// The smallest valid p (topo::valid_partition_sizes) whose plan fits the budget: the least
// communication scale that fits.
PartitionChoice choose_partition_size(const ModelDesc& model, const Cluster& cluster, int world, int micro_batch,
                                      int seq_len, bool recompute);

std::string bytes_text(double bytes);  // "1.23 GiB"

}  // namespace mics::plan
