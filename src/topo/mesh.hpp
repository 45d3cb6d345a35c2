#pragma once
// The rank mesh: four named dimensions, N = r * p * s * t.
//   t  tensor parallel (Megatron-style splits of every block and the vocabulary)
//   p  data shard: the MiCS partition inside each (stage, tensor rank) slice
//   s  pipeline stages (contiguous blocks of layers)
//   r  data replicate: the MiCS replication groups
//
// Placement rule (default order "tpsr", fastest-varying first): tensor ranks are packed inside
// a node first, then the shard dimension, then pipeline, then replicate:
//   rank = ((r_i * s + s_i) * p + p_i) * t + t_i
// so the chattiest groups (tensor all-reduces every layer, then the partition's all-gathers)
// stay on the intra-node rail as long as they fit a node. `order` overrides it: any permutation
// of the letters t, p, s, r, fastest first (e.g. "ptsr" puts the data shards innermost).
//
// Communicators (build_mesh, collective over the world, built once at start-up):
//   tensor    the t ranks of one (r, p, s): the TP all-reduces, ordered by t_i
//   pipeline  the s ranks of one (r, p, t), ordered by s_i: point-to-point only (activations
//             forward, their gradients back between stage s_i and s_i +- 1)
//   data      the r*p ranks of one (s, t) slice, ordered by data index d = r_i * p + p_i: the
//             sharded engine runs on it and builds the MiCS partition groups (contiguous
//             blocks of p of it, i.e. same r_i) and replication groups (same p_i) inside it
//   model     the s*t ranks of one data index: the engine's gradient-norm sum over the slices
//   tied      stage 0 and stage s-1 of one (r, p, t) when s > 1: the tied token embedding's
//             gradient sum (null when s == 1)
//   control   a copy of the world for the trainer's few control floats per step
// Each communicator has one user thread (the engine's communication thread runs them all).
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace mics::topo {

struct MeshShape {
  int r = 1, p = 1, s = 1, t = 1;
  std::string order = "tpsr";  // fastest-varying first
  int size() const { return r * p * s * t; }
  int data() const { return r * p; }
  std::string describe() const;  // "r=2 p=2 s=1 t=2 (order tpsr)"
};

struct MeshCoord {
  int r = 0, p = 0, s = 0, t = 0;
  int data(const MeshShape& m) const { return r * m.p + p; }
};

// Throws kInvalidArgument when the order is not a permutation of "tpsr".
void check_order(const std::string& order);
int mesh_rank(const MeshShape& mesh, const MeshCoord& coord);
MeshCoord mesh_coord(const MeshShape& mesh, int rank);

// What the model allows: t must divide the heads and the vocabulary (the 4C MLP and the C
// channels then split evenly too: C = H * head size), s must be at most the layers.
struct MeshLimits {
  int heads = 1, vocab = 1, layers = 1;
};

// Checks t and s against the world and the model; returns r*p = N/(s*t). Throws with the
// valid choices of t and s (and what r*p they leave) when they do not fit.
int check_mesh(int world, int t, int s, const MeshLimits& limits);
// Sequence parallelism splits the T positions of every sequence evenly over the t tensor
// ranks: throws (listing the t that check_mesh accepts for this world and model and that
// divide T) when t is 1 or does not divide T.
void check_sequence_parallel(int world, int t, int seq_len, const MeshLimits& limits);
// Every (t, s) pair valid for this world and model, as "t=2 s=1 (r*p=4)", one per element.
std::vector<std::string> valid_mesh_choices(int world, const MeshLimits& limits);

struct Mesh {
  MeshShape shape;
  MeshCoord me;
  std::unique_ptr<comm::Communicator> tensor, pipeline, data, model, tied, control;
  bool first_stage() const { return me.s == 0; }
  bool last_stage() const { return me.s == shape.s - 1; }
};

// Collective over `world` (world.size() == shape.size()).
Mesh build_mesh(comm::Communicator& world, const MeshShape& shape);

// Contiguous layers per stage: stage i gets layers [first, first + count), the first
// (layers % s) stages one more.
struct StageLayers {
  int first = 0, count = 0;
};
StageLayers stage_layers(int layers, int stages, int stage);

}  // namespace mics::topo
