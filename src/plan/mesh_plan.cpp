// The mesh planner's closed forms (see mesh_plan.hpp).
#include "plan/mesh_plan.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "base/error.hpp"
#include "model/gpt_tp.hpp"
#include "topo/groups.hpp"
#include "topo/mesh.hpp"

namespace mics::plan {

std::string MeshLayout::describe() const {
  return fmt::format("t={}{} s={} p={} r={}", t, sequence_parallel ? " sp" : "", s, p, r);
}

namespace {

int ranks_per_node(const MeshSpec& spec) { return std::max(1, std::min(spec.gpus, spec.cluster.gpus_per_node)); }
int seq_of(const MeshSpec& spec) { return spec.seq_len > 0 ? spec.seq_len : spec.model.config.max_seq; }

}  // namespace

std::string mesh_invalid(const MeshSpec& spec, int t, int s, int p, bool sequence_parallel) {
  const int n = ranks_per_node(spec), N = spec.gpus;
  const auto& c = spec.model.config;
  // Tensor and pipeline layouts cut transformer layers (heads, blocks); the MLP has neither.
  if (spec.model.is_mlp()) return fmt::format("{} is an MLP: the mesh search needs a GPT model", spec.model.name);
  if (t < 1 || s < 1 || p < 1) return "t, s and p must be >= 1";
  if (c.heads % t != 0) return fmt::format("t={} does not divide the {} heads", t, c.heads);
  if (n % t != 0) return fmt::format("t={} does not divide the {} ranks per node", t, n);
  if (s > c.layers) return fmt::format("s={} is more than the {} layers", s, c.layers);
  if (sequence_parallel && t < 2) return "sequence parallelism needs t >= 2";
  if (sequence_parallel && seq_of(spec) % t != 0)
    return fmt::format("sequence parallelism: t={} does not divide the sequence length {}", t, seq_of(spec));
  if (N % (t * s) != 0) return fmt::format("t*s={} does not divide N={}", t * s, N);
  const int D = N / (t * s);
  const auto valid = topo::valid_partition_sizes(D, std::max(1, std::min(D, n / t)));
  if (std::find(valid.begin(), valid.end(), p) == valid.end())
    return fmt::format("p={} is not a valid partition of the {} data ranks", p, D);
  return "";
}

double mesh_activation_bytes(const MeshSpec& spec, int t, int s, bool sequence_parallel) {
  const auto& c = spec.model.config;
  const int T = seq_of(spec), B = spec.micro_batch;
  if (spec.cluster.cpu_engine) {
    if (t == 1 && s == 1) return static_cast<double>(spec.model.engine_activation_bytes(B, T, spec.recompute));
    const topo::StageLayers first = topo::stage_layers(c.layers, s, 0);
    return static_cast<double>(
        model::tp_activation_bytes(c, t, B, T, first.count, sequence_parallel, spec.recompute, /*with_head=*/s == 1));
  }
  // Accelerators: the model's activations divided by t*s, plus (without sequence parallelism)
  // the LayerNorm and dropout regions' 10*s*b*h per layer that every tensor rank keeps whole.
  const double whole = static_cast<double>(spec.model.gpu_activation_bytes(B, T, spec.recompute));
  const double layers_kept = spec.recompute ? 1.0 : static_cast<double>(c.layers) / s;
  const double replicated = sequence_parallel ? 0.0 : 10.0 * T * B * c.channels * layers_kept * (1.0 - 1.0 / t);
  return whole / (t * s) + replicated;
}

MeshPrediction predict_mesh(const MeshSpec& spec, const CostParams& params, int t, int s, int p, bool sequence_parallel) {
  MeshPrediction pr;
  const Cluster& cl = spec.cluster;
  const auto& c = spec.model.config;
  const int N = spec.gpus, n = ranks_per_node(spec), T = seq_of(spec), B = spec.micro_batch;
  // The global batch is the pure layout's (N * S * B sequences): D = N/(t*s) data ranks run
  // t*s times the micro-batches.
  const int S = spec.grad_accum * t * s;
  const int D = N / (t * s), r = D / p;
  // Data ranks of one slice per node under the default placement (tpsr): a node of n ranks
  // holds n/t of one stage's shard group when t*p fills it, else whole groups of p and, when
  // t*p*s fits in it, n/(t*p*s) of the replicas.
  const int nd = std::max(1, std::min(D, t * p >= n ? n / t : p * std::max(1, n / (t * p * s))));
  pr.layout = {t, s, p, r, sequence_parallel && t > 1};
  const double e = cl.cpu_engine ? 4.0 : 2.0;
  const double tokens = static_cast<double>(B) * T;
  const double layers_per_stage = static_cast<double>(c.layers) / s;
  const CollectiveModel cm(rails_at_core_sharing(cl, N), params, N);
  const Rail& intra = cm.intra();
  const Rail& inter = cm.inter();

  // A CPU-bound host (the CPU engine, more ranks than cores; simulator.hpp): every rank computes
  // at its fair share of the cores and nothing overlaps, and a stage's idle time in the
  // pipeline bubble is another stage's core time (the host's work is what it is), so no bubble.
  const bool cpu_bound = cl.cpu_engine && cl.host_cores > 0 && N > cl.host_cores;
  const double share = cpu_bound ? static_cast<double>(cl.host_cores) / N : 1.0;

  // Compute.
  const double rate = cl.peak_flops * params.compute_efficiency * share;
  double compute = spec.model.flops_per_token(T) * tokens / (t * s) / rate * (spec.recompute ? 4.0 / 3.0 : 1.0);
  if (!cl.cpu_engine)
    compute += (spec.recompute ? 4.0 : 3.0) * layers_per_stage * 2.0 * spec.model.layer_activation_bytes(B, T) / t /
               cl.memory_bandwidth;
  // Tensor all-reduces (intra-node rail: t divides the node).
  const double act = tokens * c.channels * e;
  const double tensor = t > 1 ? 4.0 * layers_per_stage * ring_time(Collective::kAllReduce, t, act, intra) : 0.0;
  // Pipeline messages: stage neighbours are t*p ranks apart (default placement).
  const bool p2p_inter = s > 1 && t * p >= n && N > n;
  const Rail& p2p_rail = p2p_inter ? inter : intra;
  // With sequence parallelism a stage sends its N/t rows only.
  const double p2p_act = act / (sequence_parallel && t > 1 ? t : 1);
  const double p2p = s > 1 ? 2.0 * (p2p_rail.latency + p2p_act / p2p_rail.bandwidth) : 0.0;
  const double u = compute + tensor + p2p;
  pr.compute_s = S * compute;
  pr.tensor_s = S * tensor;
  pr.pipeline_p2p_s = S * p2p;
  pr.bubble_fraction = static_cast<double>(s - 1) / (S + s - 1);
  pr.bubble_s = cpu_bound ? 0.0 : (s - 1) * u;
  const double pipeline = S * u + pr.bubble_s;

  // The data dimension: MiCS over p inside the slice, replicated over r.
  const auto sizes = spec.model.unit_sizes();
  double slice_params = 0;
  for (uint64_t x : sizes) slice_params += static_cast<double>(x);
  slice_params /= static_cast<double>(t) * s;
  const double M = slice_params * e;
  // A virtual cluster for one slice's data ranks: nd per node, the node's network shared by t slices.
  Cluster dc = rails_at_core_sharing(cl, N);
  dc.gpus_per_node = nd;
  dc.inter.bandwidth /= t;
  const CollectiveModel dm(dc, params, D);
  double gathers = 0, rs = 0, ar = 0;
  if (p > 1) {
    gathers = 2.0 * S * dm.partition_all_gather(p, M, true);
    rs = S * dm.partition_reduce_scatter(p, M);
  }
  if (r > 1) ar = dm.replication_all_reduce(p, M / p);
  pr.data_exposed_s = (cpu_bound ? gathers + rs : std::max(0.0, gathers + rs - pr.compute_s)) + ar;
  pr.optimizer_s = 32.0 * slice_params / p / cl.memory_bandwidth / share;
  pr.step_s = pipeline + pr.data_exposed_s + pr.optimizer_s;
  pr.tokens_per_s = tokens * S * D / pr.step_s;
  pr.tflops_per_gpu = spec.model.flops_per_token(T) * tokens * S * D / N / pr.step_s / 1e12;

  // Rank 0's bytes per step by rail (its ring successor's rail; see mesh_plan.hpp).
  auto add = [&](bool on_inter, double bytes) { (on_inter ? pr.inter_bytes : pr.intra_bytes) += bytes; };
  if (t > 1) add(false, S * 4.0 * layers_per_stage * 2.0 * (t - 1) / t * act);
  if (s > 1) add(p2p_inter, S * p2p_act);
  if (p > 1) {
    if (p <= nd) {
      add(false, S * 3.0 * (p - 1.0) / p * M);
    } else {  // hierarchical gathers: (k-1)/k of M/nd across nodes, then (nd-1)/nd of M inside
      const double k = static_cast<double>(p) / nd;
      add(true, S * 2.0 * (k - 1.0) / k * M / nd);
      add(false, S * 2.0 * (nd - 1.0) / nd * M);
      add(nd == 1, S * (p - 1.0) / p * M);
    }
  }
  if (r > 1) add(p >= nd && N > n, 2.0 * (r - 1.0) / r * M / p);  // one member per node: inter

  // Memory.
  const double elem = cl.cpu_engine ? 4.0 : 2.0;
  const double unit0 = static_cast<double>(sizes[0]) / t, block = sizes.size() > 1 ? static_cast<double>(sizes[1]) / t : 0.0;
  pr.memory.partition_size = p;
  pr.memory.model_states = static_cast<uint64_t>(16.0 * slice_params / p);
  pr.memory.gathered = p == 1 ? 0 : static_cast<uint64_t>(elem * (unit0 + 2 * block));
  pr.memory.grad_buffers = cl.cpu_engine || p > 1 ? static_cast<uint64_t>(elem * (unit0 + block)) : 0;
  pr.memory.activations =
      static_cast<uint64_t>(mesh_activation_bytes(spec, t, s, pr.layout.sequence_parallel) * std::min(S, s));
  pr.fits = pr.memory.total() <= memory_budget(cl);
  return pr;
}

MeshSearch search_mesh(const MeshSpec& spec, const CostParams& params) {
  if (spec.model.is_mlp())
    throw Error(ErrorKind::kInvalidArgument, mesh_invalid(spec, 1, 1, 1),
                {.layer = "plan", .where = "--mesh-search", .hint = "use a GPT model (a preset or L..H..C..V..T..)"});
  MeshSearch out;
  const int N = spec.gpus;
  bool have_best = false, have_pure = false;
  for (int t = 1; t <= N; ++t) {
    for (int s = 1; s <= spec.model.config.layers && t * s <= N; ++s) {
      if (N % (t * s) != 0) continue;
      const int D = N / (t * s);
      for (int p = 1; p <= D; ++p) {
        for (const bool sp : {false, true}) {
          if (D % p != 0 || !mesh_invalid(spec, t, s, p, sp).empty()) continue;
          const MeshPrediction pr = predict_mesh(spec, params, t, s, p, sp);
          ++out.layouts_tried;
          out.layouts.push_back(pr);
          if (pr.fits) ++out.layouts_fit;
          // sp ties plain tensor parallelism on time: it is the best only where it fits alone
          if (pr.fits && (!have_best || pr.step_s < out.best.step_s)) out.best = pr, have_best = true;
          if (t == 1 && s == 1 && !have_pure && (pr.fits || p == D)) out.pure_mics = pr, have_pure = true;
        }
      }
    }
  }
  if (!have_best) out.best.fits = false;
  return out;
}

}  // namespace mics::plan
