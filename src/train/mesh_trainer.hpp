#pragma once
// `mics train --tensor-parallel t --pipeline-parallel s`: MiCS on the data dimensions of a
// rank mesh (topo/mesh.hpp), Megatron-style tensor parallelism (model/gpt_tp.hpp) and a
// pipeline of contiguous layers per stage with a 1F1B (or GPipe) schedule over the S
// micro-batches of an optimizer step. trainer.cpp dispatches here when t > 1 or s > 1.
#include "io/dataset.hpp"
#include "model/gpt.hpp"
#include "train/config.hpp"

namespace mics::train {

// The partition size p over the data ranks D = N/(s*t): ddp 1, zero3 D, mics the requested
// p (0: the data ranks of one slice on a node, n/t with the default placement). Throws
// listing the valid values.
int mesh_partition_size(const TrainConfig& c, int data_ranks, int data_ranks_per_node);

// What `mics train -n` checks before it starts ranks: the mesh and p (throws with the valid
// choices).
void mesh_preflight(const TrainConfig& c, const model::GptConfig& mc, int world, int ranks_per_node);

// `val` may be null (no validation shards): then no evaluation and no eval loss.
int run_mesh_training(const TrainConfig& c, const model::Gpt& gpt, int seq_len, const io::TokenDataset& train,
                      const io::TokenDataset* val);

}  // namespace mics::train
