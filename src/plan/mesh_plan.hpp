#pragma once
// `mics plan` over the rank mesh (topo/mesh.hpp): tensor parallel t, pipeline stages s and the
// MiCS partition p on the data ranks D = N/(t*s) of every (stage, tensor rank) slice, r = D/p.
// A closed-form step model (no timeline), e = bytes per element (2 bf16 on accelerators, 4 on
// the CPU engine), N_tok = B*T tokens per micro-batch, L/s layers per stage:
//
// The global batch stays the pure layout's: grad_accum is the micro-batches per rank of t = s = 1,
// and a mesh's D data ranks each run S = grad_accum * t * s micro-batches of B sequences.
//   compute per micro-batch    flops_per_token(T) * N_tok / (t*s) / (peak * efficiency)
//                              (x 4/3 with recompute; accelerators add the layers' elementwise
//                              passes at HBM bandwidth, divided by t)
//   tensor per micro-batch     4 * L/s all-reduces (2 forward + 2 backward) of N_tok*C*e bytes,
//                              ring over t: 2(t-1)*alpha + 2(t-1)/t * M / bw, on the intra-node
//                              rail (t divides the ranks per node: placed innermost)
//   pipeline per micro-batch   2 (s > 1) point-to-point messages of N_tok*C*e bytes (the
//                              activation forward, its gradient back): alpha + M / bw, on the
//                              inter-node rail when a stage's t*p ranks fill a node, else intra
//   stage time u               compute + tensor + pipeline per micro-batch
//   pipeline                   (S + s - 1) * u: S micro-batches plus the bubble (s-1)/(S+s-1)
//   data (MiCS on the slice)   per micro-batch each unit gathered twice and reduce-scattered
//                              once over p, slice bytes P_slice*e with P_slice = params/(t*s);
//                              overlapped with compute, exposed = max(0, gathers + reduce-
//                              scatters - S * compute); plus the 2-hop all-reduce of the shard
//                              over r at the step's boundary (exposed). The data groups of one
//                              node are its n/t data ranks per slice; the t slices of a node
//                              share its network (the inter rail divided by t).
//   optimizer                  32 * P_slice/p / HBM bandwidth
//   step                       pipeline + exposed data + optimizer
// On a CPU-bound host (the CPU engine with more ranks than host_cores; plan/simulator.hpp) the
// compute and the optimizer run at the fair share of a core, host_cores/N, the data
// collectives are all exposed, and the bubble costs nothing (an idle stage's cores go to the
// others): pipeline = S * u.
// Memory per rank: the model states, gathered units and gradient buffers of memory.hpp for the
// slice (divided by t*s); activations: stage 0's per micro-batch times the micro-batches in
// flight with 1F1B, min(S, s). Per micro-batch, on the CPU engine with t or s > 1 exactly what
// the mesh trainer's TpPass keeps (model::tp_activation_bytes: the LayerNorm regions' tensors
// whole on every tensor rank, or divided by t with sequence parallelism, the rest divided by
// t); on accelerators (Korthikanti et al.) s*b*h*(10 + 24/t + 5*a*s/(h*t)) per layer, and
// s*b*h*(34/t + 5*a*s/(h*t)) with sequence parallelism (its 10 s*b*h of LayerNorm and dropout
// regions divided by t too). Sequence parallelism replaces each tensor all-reduce by a
// reduce-scatter and an all-gather: the same ring bytes and hops, so the same time; the search
// tries it beside plain tensor parallelism for every t > 1 (it wins on memory only).
// Bytes per rank and step (rank 0: stage 0, tensor rank 0) on each rail: tensor 4*L/s*S
// all-reduces of 2(t-1)/t*M; pipeline S messages of M (stage 0 only sends forward); data the
// engine's formula (2 all-gathers of (p-1)/p and a reduce-scatter of (p-1)/p of the slice per
// micro-batch, 2(r-1)/r of the shard per step).
//
// Constraints: t divides the heads and the ranks per node (at most one node), s <= layers,
// t*s divides N, p a valid partition size of the D data ranks (topo::valid_partition_sizes
// with n/t data ranks per node).
#include <string>
#include <vector>

#include "plan/collective_model.hpp"
#include "plan/memory.hpp"
#include "plan/model_desc.hpp"

namespace mics::plan {

struct MeshLayout {
  int t = 1, s = 1, p = 1, r = 1;
  bool sequence_parallel = false;  // t > 1 only
  std::string describe() const;  // "t=2 s=4 p=8 r=2", "t=2 sp s=4 p=8 r=2"
};

struct MeshPrediction {
  MeshLayout layout;
  double step_s = 0, compute_s = 0, tensor_s = 0, pipeline_p2p_s = 0, bubble_s = 0, data_exposed_s = 0,
         optimizer_s = 0;
  double bubble_fraction = 0;
  double tokens_per_s = 0, tflops_per_gpu = 0;
  double intra_bytes = 0, inter_bytes = 0;  // rank 0 per step
  MemoryPlan memory;
  bool fits = false;
};

struct MeshSpec {
  ModelDesc model;
  Cluster cluster;
  int gpus = 8, micro_batch = 1, grad_accum = 1, seq_len = 0;  // grad_accum: of the pure layout (t = s = 1)
  bool recompute = false;
};

// Empty when (t, s, p) is valid for the spec, else why not.
std::string mesh_invalid(const MeshSpec& spec, int t, int s, int p, bool sequence_parallel = false);
MeshPrediction predict_mesh(const MeshSpec& spec, const CostParams& params, int t, int s, int p,
                            bool sequence_parallel = false);
// Activations one rank of stage 0 keeps per micro-batch (MeshPrediction::memory.activations is
// this times the micro-batches in flight, min(S, s) with 1F1B).
double mesh_activation_bytes(const MeshSpec& spec, int t, int s, bool sequence_parallel);

struct MeshSearch {
  MeshPrediction best;       // the fastest layout that fits (best.fits false: none fits)
  MeshPrediction pure_mics;  // t = s = 1 with the smallest p that fits (or p = N)
  int layouts_tried = 0, layouts_fit = 0;
  std::vector<MeshPrediction> layouts;  // every valid layout tried
};
MeshSearch search_mesh(const MeshSpec& spec, const CostParams& params);

}  // namespace mics::plan
