// The mesh trainer: MiCS x tensor x pipeline parallel (see mesh_trainer.hpp); the stages compute on the
// CPU (model/gpt_tp.hpp) or, with --device cuda, on GPUs (model/cuda/gpt_tp_cuda.hpp).
//
// Per rank (coordinates (r_i, p_i, s_i, t_i) of topo/mesh.hpp): one shard::Engine on the data
// communicator of its (stage, tensor rank) slice holds the slice's units, sharded over p and
// replicated over r (hierarchical all-gather and 2-hop sync as in plain MiCS):
//   first or last stage  "wte" [V/t, C]   (both ends hold a copy of the tied embedding; the
//                                          engine sums the two gradient shards at the step's
//                                          boundary over the "tied" communicator)
//   first stage          "wpe" [T, C]
//   each local block     "block.l.split", "block.l.rep" (model/gpt_tp.hpp)
//   last stage           "lnf" [2C]
// Every unit is gathered exactly twice per micro-batch (forward and backward; with one stage
// wte is gathered for the embedding and the head and kept through the backward, as trainer.cpp
// does with unit 0), so the engine's traffic formula (shard/engine.hpp) holds unchanged.
// Gradient norm: the engine sums squares over the "model" communicator (the s*t slices of a
// data index), replicated-over-t units weighted 1/t and the tied wte 1/2 on each end.
//
// Data: the data index d = r_i*p + p_i reads like rank d of D = r*p data ranks
// (io::Prefetcher), every stage of a pipeline the same micro-batches (the first needs the
// inputs, the last the targets), so the global batch is D*S*B sequences as in a D-rank run.
//
// Schedule over the S micro-batches of a step, stage i of s: 1F1B (warm-up of
// min(s-i-1, S) forwards, then one forward and one backward alternating, then the remaining
// backwards; at most s-i micro-batches' activations held) or GPipe (all forwards, then all
// backwards; S held). Activations go forward and their gradients back as blocking
// point-to-point messages on the "pipeline" communicator, tagged 2m (activation) and 2m+1
// (gradient) for micro-batch m; steady-state pairs use send_recv so neighbours never wait on
// each other's sends. Bubble fraction (both schedules): (s-1)/(S+s-1) of a step, reported with
// the measured time the stage waited in pipeline messages.
//
// Traffic per optimizer step and rank, N = B*T rows, E = N*C*4 bytes of one activation,
// A(x) = comm::predict_traffic(tensor, all_reduce, x floats), likewise G(x) (all_gather) and
// R(x) (reduce_scatter) of an x-float array, Lb = this stage's blocks, rc = 1 with --recompute
// (every block's forward runs once more in the backward, its collectives included), else 0:
//   tensor:   S * [ (4 + 2*rc)*Lb*A(N*C) + first*A(N*C) + last*(A(N) + A(2N) + A(N*C)) ]
//             (0 when t = 1); with --sequence-parallel (model/gpt_tp.hpp):
//             S * [ Lb*((6 + 2*rc)*G(N*C) + (4 + 2*rc)*R(N*C) + A(6C))
//                   + first*(R(N*C) + G(N*C)) + last*(2*G(N*C) + R(N*C) + A(N) + A(2N) + A(2C)) ]
//   pipeline: S * [ (not last)*E on the rail to stage i+1 + (not first)*E on the rail to i-1 ]
//             with E = N/t*C*4 bytes under --sequence-parallel (each rank sends its positions)
//   data:     shard::Engine::expected_traffic() of the slice's engine, which includes the tied
//             embedding's all-reduce of its shard (V/t*C padded / p floats) over 2 ranks and
//             the one-float norm all-reduce over the model communicator
// The summary's "mesh" object carries rank 0's bytes per step for each and whether every
// rank's counters equal these.
//
// Checkpoints (train/checkpoint.hpp): the same files, protocol and async saves as the plain
// trainer, with the tensors in the one-process model's layout (a StateLayout built from
// model::tp_unit_pieces), so any mesh or plain layout loads them; the checkpointer's control
// all-reduces run over the "control" communicator (every rank), not the slice's engine.
// Samples: trainer.cpp's continuations through the pipeline (see sample() below).
// --recompute: every block keeps only its input and reruns its forward in the backward
// (model/gpt_tp.hpp; bit-identical gradients). --trace: the plain trainer's Chrome trace
// (obs/), here with every communicator of the mesh (tensor, pipeline point-to-point excluded:
// the observer knows collectives only, data, model, tied) and spans per block.
#include "train/mesh_trainer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/log.hpp"
#include "comm/clock_sync.hpp"
#include "comm/gpu_comm.hpp"
#include "comm/runtime.hpp"
#include "comm/traffic_model.hpp"
#include "model/cuda/gpt_cuda.hpp"
#include "model/cuda/gpt_tp_cuda.hpp"
#include "model/gpt_tp.hpp"
#include "obs/observer.hpp"
#include "shard/engine.hpp"
#include "topo/groups.hpp"
#include "topo/mesh.hpp"
#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/sampling.hpp"
#include "train/schedule.hpp"
#include "train/stop_signal.hpp"

namespace mics::train {

namespace {

constexpr int kIntra = static_cast<int>(fabric::Rail::kIntra);
constexpr int kInter = static_cast<int>(fabric::Rail::kInter);

topo::MeshLimits limits_of(const model::GptConfig& mc) { return {mc.heads, mc.vocab, mc.layers}; }

// Data ranks of one slice per node under the default placement (tensor innermost).
int data_per_node(int ranks_per_node, int t, int data_ranks) {
  if (ranks_per_node % t != 0) return data_ranks;  // a slice's ranks are spread: treat as one node
  return std::max(1, std::min(data_ranks, ranks_per_node / t));
}

comm::Traffic minus(const comm::Traffic& a, const comm::Traffic& b) {
  comm::Traffic t;
  for (int i = 0; i < fabric::kNumRails; ++i) {
    t.bytes_sent[static_cast<size_t>(i)] = a.bytes_sent[static_cast<size_t>(i)] - b.bytes_sent[static_cast<size_t>(i)];
    t.msgs_sent[static_cast<size_t>(i)] = a.msgs_sent[static_cast<size_t>(i)] - b.msgs_sent[static_cast<size_t>(i)];
  }
  return t;
}
void add(comm::Traffic& total, const comm::Traffic& t, uint64_t times = 1) {
  for (size_t i = 0; i < static_cast<size_t>(fabric::kNumRails); ++i) total.bytes_sent[i] += t.bytes_sent[i] * times;
}
bool same_bytes(const comm::Traffic& a, const comm::Traffic& b) {
  return a.bytes_sent[kIntra] == b.bytes_sent[kIntra] && a.bytes_sent[kInter] == b.bytes_sent[kInter];
}

}  // namespace

int mesh_partition_size(const TrainConfig& c, int data_ranks, int data_ranks_per_node) {
  const topo::Strategy strategy = topo::parse_strategy(c.strategy);
  const int requested = std::stoi(c.partition_size);
  return topo::resolve_partition_size(strategy, requested, data_ranks, data_ranks_per_node);
}

namespace {
// --device cuda: a GPU this process can use, and a model the GPU stage is built for.
void check_gpu_stage(const TrainConfig& c, const model::GptConfig& mc) {
  if (c.device != "cuda") return;
  const std::string no_gpu = model::cuda::device_unavailable_reason();
  if (!no_gpu.empty())
    throw Error(ErrorKind::kUnavailable, no_gpu,
                {.layer = "train", .where = "mics train --device cuda", .hint = "run on a machine with an NVIDIA GPU, or use --device cpu"});
  const std::string why = model::cuda::stage_unsupported_reason(mc, {c.sequence_parallel, c.recompute});
  if (!why.empty()) throw Error(ErrorKind::kInvalidArgument, why, {.layer = "train", .where = "mics train --device cuda"});
}
}  // namespace

void mesh_preflight(const TrainConfig& c, const model::GptConfig& mc, int world, int ranks_per_node) {
  check_gpu_stage(c, mc);
  const int d = topo::check_mesh(world, c.tensor_parallel, c.pipeline_parallel, limits_of(mc));
  if (c.sequence_parallel)
    topo::check_sequence_parallel(world, c.tensor_parallel, c.seq_len > 0 ? c.seq_len : mc.max_seq, limits_of(mc));
  topo::check_order(c.mesh_order);
  mesh_partition_size(c, d, data_per_node(ranks_per_node, c.tensor_parallel, d));
}

namespace {

// One stage's units in its engine.
struct StageUnits {
  int wte = -1, wpe = -1, lnf = -1;
  std::vector<int> split, rep;  // per local block
};

}  // namespace

int run_mesh_training(const TrainConfig& c, const model::Gpt& gpt, int T, const io::TokenDataset& train_data,
                      const io::TokenDataset* val_data) {
  const model::GptConfig& mc = gpt.config();
  check_gpu_stage(c, mc);
  auto rt = comm::Runtime::start("train " + describe(c));
  const int rank = rt->rank(), world = rt->world_size();
  log::set_rank(rank);
  const bool leader = rank == 0;
  const auto& topology = rt->topology();
  const int per_node = topology.uniform_ranks_per_node() ? topology.uniform_ranks_per_node() : world;
  const int t = c.tensor_parallel, s = c.pipeline_parallel, S = c.grad_accum, B = c.micro_batch;
  const int D = topo::check_mesh(world, t, s, limits_of(mc));
  if (c.sequence_parallel) topo::check_sequence_parallel(world, t, T, limits_of(mc));
  const int p = mesh_partition_size(c, D, data_per_node(per_node, t, D));
  // --device cuda: every rank computes its stage on a GPU (model/cuda/gpt_tp_cuda.hpp); the
  // shards, AdamW, tensor and pipeline messages stay on the host as on the CPU.
  const bool on_gpu = c.device == "cuda";
  std::string gpu_name;
  if (on_gpu) {
    const int device = comm::select_gpu_device(*rt);
    gpu_name = fmt::format("GPU {} ({})", device, model::cuda::device_summary().name);
  }
  const int threads = c.threads > 0 ? c.threads
                                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, ranks_on_host()));
  model::set_compute_threads(threads);

  // --- observability: the plain trainer's records and trace; attached before the mesh's
  // communicators are split, so every one of them (and the engine's) reports to it ----------
  obs::Observer observer(rank, world);
  observer.set_clock(comm::sync_clocks(rt->world()));
  if (!c.trace.empty()) observer.enable_trace({static_cast<size_t>(knobs().trace_max_events), 2});
  observer.set_fabric_baseline({rt->transport().counters(fabric::Rail::kIntra).bytes_sent,
                                rt->transport().counters(fabric::Rail::kInter).bytes_sent});
  rt->world().set_observer(&observer);
  obs::Observer* ob = &observer;

  topo::MeshShape shape{D / p, p, s, t, c.mesh_order};
  topo::Mesh mesh = topo::build_mesh(rt->world(), shape);
  const topo::MeshCoord me = mesh.me;
  const bool first = mesh.first_stage(), last = mesh.last_stage();
  const topo::StageLayers layers = topo::stage_layers(mc.layers, s, me.s);
  const model::TpSlice slice{me.t, t};

  // --- the slice's engine -------------------------------------------------------------------
  shard::EngineOptions eo;
  eo.strategy = topo::parse_strategy(c.strategy);
  eo.partition_size = p;
  eo.grad_accum = S;
  eo.lr = c.lr;
  eo.beta1 = 0.9f;
  eo.beta2 = 0.95f;
  eo.eps = 1e-8f;
  eo.weight_decay = c.weight_decay;
  eo.clip_norm = c.clip;
  eo.comm_dtype = c.comm_dtype == "bf16" ? DType::kBF16 : DType::kF32;
  eo.norm_group = mesh.model.get();
  shard::Engine engine(*rt, *mesh.data, eo);
  StageUnits su;
  const float rep_weight = 1.0f / static_cast<float>(t);
  if (first || last) su.wte = engine.add_unit("wte", model::tp_wte_numel(mc, t));
  if (first) su.wpe = engine.add_unit("wpe", model::tp_wpe_numel(mc));
  for (int l = layers.first; l < layers.first + layers.count; ++l) {
    su.split.push_back(engine.add_unit(fmt::format("block.{}.split", l), model::tp_split_numel(mc, t)));
    su.rep.push_back(engine.add_unit(fmt::format("block.{}.rep", l), model::tp_rep_numel(mc)));
  }
  if (last) su.lnf = engine.add_unit("lnf", model::tp_lnf_numel(mc));
  std::vector<float> full0(gpt.unit_numel(0)), full_block(gpt.num_units() > 1 ? gpt.unit_numel(1) : 0),
      scratch_rep(model::tp_rep_numel(mc));
  gpt.init_unit(0, c.seed, full0.data());
  engine.finalize([&](int unit, float* params) {
    if (unit == su.wte) return model::tp_slice_embed(mc, slice, full0.data(), params, nullptr, nullptr);
    if (unit == su.wpe) return model::tp_slice_embed(mc, slice, full0.data(), nullptr, params, nullptr);
    if (unit == su.lnf) return model::tp_slice_embed(mc, slice, full0.data(), nullptr, nullptr, params);
    for (size_t i = 0; i < su.split.size(); ++i) {
      if (unit != su.split[i] && unit != su.rep[i]) continue;
      gpt.init_unit(1 + layers.first + static_cast<int>(i), c.seed, full_block.data());
      std::vector<float> split(model::tp_split_numel(mc, t));
      model::tp_slice_block(mc, slice, full_block.data(), split.data(), scratch_rep.data());
      if (unit == su.split[i]) std::copy(split.begin(), split.end(), params);
      else std::copy(scratch_rep.begin(), scratch_rep.end(), params);
      return;
    }
  });
  if (su.wpe >= 0) engine.set_norm_weight(su.wpe, rep_weight);
  if (su.lnf >= 0) engine.set_norm_weight(su.lnf, rep_weight);
  for (int u : su.rep) engine.set_norm_weight(u, rep_weight);
  if (s > 1 && su.wte >= 0) {
    engine.set_norm_weight(su.wte, 0.5f);
    engine.tie_gradients(su.wte, mesh.tied.get());
  }

  // --- checkpoints in the logical layout (train/checkpoint.hpp) ------------------------------
  // Every engine unit is a slice of one of the one-process model's units (model/gpt_tp.hpp's
  // pieces). Identical copies split the writing: the tied wte of the first and last stage
  // (s > 1) in two halves, the units replicated over the tensor ranks in t parts.
  std::vector<std::pair<model::TpUnit, int>> unit_kind(static_cast<size_t>(engine.num_units()), {model::TpUnit::kWte, 0});
  if (su.wpe >= 0) unit_kind[static_cast<size_t>(su.wpe)] = {model::TpUnit::kWpe, 0};
  if (su.lnf >= 0) unit_kind[static_cast<size_t>(su.lnf)] = {model::TpUnit::kLnf, 0};
  for (size_t i = 0; i < su.split.size(); ++i) {
    unit_kind[static_cast<size_t>(su.split[i])] = {model::TpUnit::kSplit, layers.first + static_cast<int>(i)};
    unit_kind[static_cast<size_t>(su.rep[i])] = {model::TpUnit::kRep, layers.first + static_cast<int>(i)};
  }
  StateLayout layout;
  layout.rank = rank;
  layout.world = world;
  layout.data_ranks = D;
  layout.mesh = {{"r", shape.r}, {"p", p}, {"s", s}, {"t", t}, {"order", shape.order}};
  layout.pieces = [&](int unit) {
    const auto& [kind, layer] = unit_kind[static_cast<size_t>(unit)];
    return model::tp_unit_pieces(mc, slice, kind, layer);
  };
  layout.copies = [&](int unit) -> std::pair<int, int> {
    if (unit == su.wte) return s > 1 ? std::pair<int, int>{2, first ? 0 : 1} : std::pair<int, int>{1, 0};
    const model::TpUnit kind = unit_kind[static_cast<size_t>(unit)].first;
    if (kind == model::TpUnit::kSplit) return {1, 0};
    return {t, me.t};  // wpe, lnf and the blocks' rep units: the same on every tensor rank
  };
  layout.all_reduce = [&](float* v, size_t n, ReduceOp op) {
    comm::Communicator* ctl = mesh.control.get();
    engine.run_on_comm_thread([=] { ctl->all_reduce(v, v, n, DType::kF32, op); });
  };
  std::string loaded_from;
  const int start_step = load_initial_state(engine, c, gpt, layout, T, &loaded_from);

  // --- communication helpers (all on the engine's communication thread) ---------------------
  double pipe_wait_s = 0;
  model::TensorOps tensor_ops;
  tensor_ops.all_reduce = [&](float* data, size_t count, ReduceOp op) {
    comm::Communicator* tensor = mesh.tensor.get();
    engine.run_on_comm_thread([=] { tensor->all_reduce(data, data, count, DType::kF32, op); }, "wait for tensor all-reduce");
  };
  tensor_ops.all_gather = [&](const float* part, float* full, size_t count) {
    comm::Communicator* tensor = mesh.tensor.get();
    engine.run_on_comm_thread([=] { tensor->all_gather(part, full, count, DType::kF32); }, "wait for tensor all-gather");
  };
  tensor_ops.reduce_scatter = [&](const float* full, float* part, size_t count) {
    comm::Communicator* tensor = mesh.tensor.get();
    engine.run_on_comm_thread([=] { tensor->reduce_scatter(full, part, count, DType::kF32, ReduceOp::kSum); },
                              "wait for tensor reduce-scatter");
  };
  const model::TpOptions pass_options{c.sequence_parallel, c.recompute};
  comm::Communicator* pipe = mesh.pipeline.get();
  const size_t N = static_cast<size_t>(B) * static_cast<size_t>(T);
  // A pipeline message: this rank's rows of one micro-batch's activation (N/t with sp).
  const size_t act_bytes = (c.sequence_parallel ? N / static_cast<size_t>(t) : N) * static_cast<size_t>(mc.channels) * sizeof(float);
  auto pipe_op = [&](const std::function<void()>& op) {
    const auto t0 = Clock::now();
    engine.run_on_comm_thread(op, "wait for pipeline message");
    pipe_wait_s += seconds_since(t0);
  };
  auto tag_act = [](int m) { return static_cast<uint16_t>(2 * m); };
  auto tag_grad = [](int m) { return static_cast<uint16_t>(2 * m + 1); };

  // --- start-up block --------------------------------------------------------------------------
  const std::string schedule_name = s == 1 ? "1f1b" : c.pipeline_schedule;
  const bool gpipe = schedule_name == "gpipe";
  const double bubble = static_cast<double>(s - 1) / static_cast<double>(S + s - 1);
  const uint64_t tokens_per_step = static_cast<uint64_t>(D) * S * B * T;
  if (leader) {
    std::string block;
    block += fmt::format("mics train: {} ({})\n", c.model, mc.describe());
    block += fmt::format("  mesh {} over {}: tensor groups of {}, pipeline of {} stages ({} schedule, bubble {:.3f}), "
                         "data {} ranks per slice with {} p={} r={}\n",
                         shape.describe(), topology.describe(), t, s, schedule_name, bubble, D, c.strategy, p, D / p);
    if (on_gpu)
      block += fmt::format("  device cuda: each rank's stage on its {} (bf16 GEMMs, fp32 accumulation); shards, AdamW, "
                           "tensor and pipeline messages on the host\n",
                           gpu_name);
    block += fmt::format("  batch: {} data ranks x {} micro-steps x {} sequences x {} tokens = {} tokens per step; {} steps\n",
                         D, S, B, T, tokens_per_step, c.steps);
    if (c.sequence_parallel || c.recompute)
      block += fmt::format("  activations:{}{}\n",
                           c.sequence_parallel ? fmt::format(" sequence parallel (LayerNorm regions hold {} of {} positions per rank)", T / t, T) : "",
                           c.recompute ? " recompute (each block keeps only its input)" : "");
    if (c.ckpt_every > 0)
      block += fmt::format("  checkpoints every {} steps into {} (logical layout: loads into any mesh or strategy)\n",
                           c.ckpt_every, c.out);
    std::fputs(block.c_str(), stdout);
    std::fflush(stdout);
  }
  std::unique_ptr<MetricsWriter> metrics;
  std::string metrics_path = c.metrics;
  if (metrics_path.empty() && !c.out.empty()) metrics_path = c.out + "/metrics.jsonl";
  if (leader) {
    if (!c.out.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(c.out, ec);
      if (ec)
        throw Error(ErrorKind::kIo, fmt::format("cannot create --out {}: {}", c.out, ec.message()),
                    {.layer = "train", .where = "mics train", .hint = "choose a writable directory"});
    }
    if (!metrics_path.empty()) metrics = std::make_unique<MetricsWriter>(metrics_path);
  }

  // --- activations: a pass per micro-batch in flight -----------------------------------------
  const int slots = gpipe ? S : std::min(S, s - me.s);
  std::vector<std::unique_ptr<model::StagePass>> passes;
  for (int i = 0; i < slots; ++i)
    passes.push_back(on_gpu ? model::cuda::make_stage_pass(mc, slice, B, T, layers.count, tensor_ops, pass_options)
                            : std::make_unique<model::TpPass>(mc, slice, B, T, layers.count, tensor_ops, pass_options));
  auto pass = [&](int m) -> model::StagePass& { return *passes[static_cast<size_t>(m % slots)]; };
  std::vector<float> gwte(su.wte >= 0 ? model::tp_wte_numel(mc, t) : 0), gwpe(su.wpe >= 0 ? model::tp_wpe_numel(mc) : 0),
      glnf(su.lnf >= 0 ? model::tp_lnf_numel(mc) : 0), gsplit(model::tp_split_numel(mc, t)), grep(model::tp_rep_numel(mc));
  std::vector<io::MicroBatch> batches(static_cast<size_t>(S));
  double loss_sum = 0;

  auto forward = [&](int m) {
    model::StagePass& ps = pass(m);
    const io::MicroBatch& mb = batches[static_cast<size_t>(m)];
    ps.set_tokens(mb.inputs.data(), mb.targets.data());
    if (first) {
      const float* wte = engine.gather(su.wte);
      const float* wpe = engine.gather(su.wpe);
      obs::ScopedSpan span(ob, "compute", "forward embed", m);
      ps.embed_forward(wte, wpe);
      engine.release(su.wpe);
      engine.release(su.wte);
    }
    for (int i = 0; i < layers.count; ++i) {
      const int a = su.split[static_cast<size_t>(i)], b = su.rep[static_cast<size_t>(i)];
      const float* w = engine.gather(a);
      const float* r = engine.gather(b);
      if (i + 1 < layers.count) {
        engine.prefetch(su.split[static_cast<size_t>(i) + 1]);
        engine.prefetch(su.rep[static_cast<size_t>(i) + 1]);
      }
      {
        obs::ScopedSpan span(ob, "compute", "forward block", layers.first + i);
        ps.block_forward(i, w, r);
      }
      engine.release(a);
      engine.release(b);
    }
    if (last) {
      const float* wte = engine.gather(su.wte);  // with one stage: kept until the embedding's backward
      const float* lnf = engine.gather(su.lnf);
      obs::ScopedSpan span(ob, "compute", "forward head+loss", m);
      loss_sum += ps.head_forward(wte, lnf);
      engine.release(su.lnf);
      if (!first) engine.release(su.wte);
    }
  };
  auto backward = [&](int m) {
    model::StagePass& ps = pass(m);
    if (last) {
      const float* wte = engine.gather(su.wte);
      const float* lnf = engine.gather(su.lnf);
      {
        obs::ScopedSpan span(ob, "compute", "backward head", m);
        ps.head_backward(wte, lnf, gwte.data(), glnf.data());
      }
      engine.release(su.lnf);
      engine.reduce_gradients(su.lnf, glnf.data());
      if (!first) {
        engine.release(su.wte);
        engine.reduce_gradients(su.wte, gwte.data());
      }
    }
    for (int i = layers.count - 1; i >= 0; --i) {
      const int a = su.split[static_cast<size_t>(i)], b = su.rep[static_cast<size_t>(i)];
      const float* w = engine.gather(a);
      const float* r = engine.gather(b);
      if (i > 0) {
        engine.prefetch(su.split[static_cast<size_t>(i) - 1]);
        engine.prefetch(su.rep[static_cast<size_t>(i) - 1]);
      }
      {
        obs::ScopedSpan span(ob, "compute", c.recompute ? "recompute+backward block" : "backward block", layers.first + i);
        ps.block_backward(i, w, r, gsplit.data(), grep.data());
      }
      engine.release(a);
      engine.release(b);
      engine.reduce_gradients(a, gsplit.data());
      engine.reduce_gradients(b, grep.data());
    }
    if (first) {
      engine.gather(su.wte);  // the forward's second gather (with one stage: still held from the head)
      engine.gather(su.wpe);
      if (!last) std::fill(gwte.begin(), gwte.end(), 0.0f);
      obs::ScopedSpan span(ob, "compute", "backward embed", m);
      ps.embed_backward(gwte.data(), gwpe.data());
      engine.release(su.wpe);
      engine.release(su.wte);
      engine.reduce_gradients(su.wpe, gwpe.data());
      engine.reduce_gradients(su.wte, gwte.data());
    }
  };
  // Pipeline messages (members of `pipe` are stages).
  auto recv_forward = [&](int m) {
    if (first) return;
    float* buf = pass(m).input();
    pipe_op([=] { pipe->recv(buf, act_bytes, me.s - 1, tag_act(m)); });
  };
  auto send_forward = [&](int m) {
    if (last) return;
    const float* buf = pass(m).output();
    pipe_op([=] { pipe->send(buf, act_bytes, me.s + 1, tag_act(m)); });
  };
  auto recv_backward = [&](int m) {
    if (last) return;
    float* buf = pass(m).grad();
    pipe_op([=] { pipe->recv(buf, act_bytes, me.s + 1, tag_grad(m)); });
  };
  auto send_backward = [&](int m) {
    if (first) return;
    const float* buf = pass(m).grad();
    pipe_op([=] { pipe->send(buf, act_bytes, me.s - 1, tag_grad(m)); });
  };
  auto send_forward_recv_backward = [&](int mf, int mb) {
    if (last) return;
    const float* out = pass(mf).output();
    float* in = pass(mb).grad();
    pipe_op([=] { pipe->send_recv(out, act_bytes, me.s + 1, tag_act(mf), in, act_bytes, me.s + 1, tag_grad(mb)); });
  };
  auto send_backward_recv_forward = [&](int mb, int mf) {
    if (first) return;
    const float* out = pass(mb).grad();
    float* in = pass(mf).input();
    pipe_op([=] { pipe->send_recv(out, act_bytes, me.s - 1, tag_grad(mb), in, act_bytes, me.s - 1, tag_act(mf)); });
  };
  auto run_schedule = [&] {
    if (gpipe) {
      for (int m = 0; m < S; ++m) recv_forward(m), forward(m), send_forward(m);
      for (int m = 0; m < S; ++m) recv_backward(m), backward(m), send_backward(m);
      return;
    }
    const int warmup = std::min(s - me.s - 1, S), remaining = S - warmup;
    for (int m = 0; m < warmup; ++m) recv_forward(m), forward(m), send_forward(m);
    if (remaining > 0) recv_forward(warmup);
    for (int k = 0; k < remaining; ++k) {
      const int mf = warmup + k, mb = k;
      forward(mf);
      send_forward_recv_backward(mf, mb);
      backward(mb);
      if (k == remaining - 1) send_backward(mb);
      else send_backward_recv_forward(mb, mf + 1);
    }
    for (int mb = remaining; mb < S; ++mb) recv_backward(mb), backward(mb), send_backward(mb);
  };

  // --- evaluation: forward only, the same fixed sequences as trainer.cpp's evaluate() --------
  // Data index d reads sequences (b*B + row)*D + d (wrapping) for b < eval_batches, like rank d
  // of a D-rank run; every stage of a pipeline the same tokens. The last stage's tensor rank 0
  // sums its batches' mean losses; the control all-reduce brings the mean to every rank. Its
  // traffic (gathers, tensor all-reduces, pipeline messages) is left out of the step figures.
  comm::Traffic eval_tensor, eval_pipe, eval_data;
  auto accumulate = [](comm::Traffic& into, const comm::Traffic& after, const comm::Traffic& before) {
    const comm::Traffic d = minus(after, before);
    for (size_t i = 0; i < static_cast<size_t>(fabric::kNumRails); ++i)
      into.bytes_sent[i] += d.bytes_sent[i], into.msgs_sent[i] += d.msgs_sent[i];
  };
  auto evaluate = [&]() -> double {
    const comm::Traffic tensor0 = mesh.tensor->traffic(), pipe0 = pipe->traffic(), data0 = engine.traffic();
    model::StagePass& ps = *passes[0];
    const int data_index = me.data(shape);
    std::vector<int32_t> inputs(N), targets(N);
    double sum = 0;
    constexpr uint16_t kEvalTag = 0xFFF0;
    for (int b = 0; b < c.eval_batches; ++b) {
      for (int row = 0; row < B; ++row) {
        const uint64_t index = (static_cast<uint64_t>(b) * B + static_cast<uint64_t>(row)) * static_cast<uint64_t>(D) +
                               static_cast<uint64_t>(data_index);
        val_data->sequence(index % val_data->num_sequences(), inputs.data() + static_cast<size_t>(row) * T,
                           targets.data() + static_cast<size_t>(row) * T);
      }
      ps.set_tokens(inputs.data(), targets.data());
      if (first) {
        const float* wte = engine.gather(su.wte);
        const float* wpe = engine.gather(su.wpe);
        ps.embed_forward(wte, wpe);
        engine.release(su.wpe);
        engine.release(su.wte);
      } else {
        float* buf = ps.input();
        pipe_op([=] { pipe->recv(buf, act_bytes, me.s - 1, kEvalTag); });
      }
      for (int i = 0; i < layers.count; ++i) {
        const int a = su.split[static_cast<size_t>(i)], r = su.rep[static_cast<size_t>(i)];
        ps.block_forward(i, engine.gather(a), engine.gather(r));
        engine.release(a);
        engine.release(r);
      }
      if (last) {
        const float* wte = engine.gather(su.wte);
        const float* lnf = engine.gather(su.lnf);
        const double loss = ps.head_forward(wte, lnf);
        if (me.t == 0) sum += loss;
        engine.release(su.lnf);
        engine.release(su.wte);
      } else {
        const float* buf = ps.output();
        pipe_op([=] { pipe->send(buf, act_bytes, me.s + 1, kEvalTag); });
      }
    }
    float total = static_cast<float>(sum);
    comm::Communicator* ctl = mesh.control.get();
    float* tv = &total;
    engine.run_on_comm_thread([=] { ctl->all_reduce(tv, tv, 1, DType::kF32, ReduceOp::kSum); });
    accumulate(eval_tensor, mesh.tensor->traffic(), tensor0);
    accumulate(eval_pipe, pipe->traffic(), pipe0);
    accumulate(eval_data, engine.traffic(), data0);
    return static_cast<double>(total) / (static_cast<double>(D) * c.eval_batches);
  };

  // --- samples: trainer.cpp's continuations of a prompt (row 0 greedy, the others at
  // temperature 0.8, the same random stream) through the pipeline ---------------------------
  // Every rank runs every token (the engines' gathers are collective over the data ranks; each
  // data index computes the same rows). The last stage gathers the rows' logits at the
  // position over the tensor group (each rank fills its vocabulary slice of a zeroed row, one
  // sum all-reduce), picks the tokens, and one control all-reduce (from the last stage's
  // tensor rank 0 of data index 0) hands them to every rank. Traffic left out like eval's.
  auto sample = [&](const std::vector<int32_t>& prompt) {
    const int rows = c.samples, V = mc.vocab;
    const int window = std::min<int>(mc.max_seq, static_cast<int>(prompt.size()) + c.sample_tokens);
    // Plain tensor parallelism whatever the flags: the window need not split over t, and
    // nothing is kept for a backward.
    model::TpPass ps(mc, slice, rows, window, layers.count, tensor_ops);
    const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(window) * static_cast<size_t>(mc.channels) * sizeof(float);
    const size_t vl = static_cast<size_t>(V / t);
    std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(rows), prompt);
    std::vector<int32_t> inputs(static_cast<size_t>(rows) * window), targets(inputs.size(), 0);
    std::vector<float> full(static_cast<size_t>(rows) * V), picked(static_cast<size_t>(rows));
    uint64_t state = c.seed * 0x9E3779B97F4A7C15ull + 1;
    auto uniform = [&state] {
      state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
      return static_cast<double>((state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
    };
    constexpr uint16_t kSampleTag = 0xFFF2;
    for (int tok = 0; tok < c.sample_tokens; ++tok) {
      int pos = 0;
      for (int r = 0; r < rows; ++r) {
        const auto& sq = seqs[static_cast<size_t>(r)];
        const int len = static_cast<int>(sq.size()), start = std::max(0, len - window);
        pos = len - start - 1;
        std::fill(inputs.begin() + static_cast<long>(r) * window, inputs.begin() + static_cast<long>(r + 1) * window, 0);
        std::copy(sq.begin() + start, sq.end(), inputs.begin() + static_cast<long>(r) * window);
      }
      ps.set_tokens(inputs.data(), targets.data());
      if (first) {
        ps.embed_forward(engine.gather(su.wte), engine.gather(su.wpe));
        engine.release(su.wpe);
        engine.release(su.wte);
      } else {
        float* buf = ps.input();
        pipe_op([=] { pipe->recv(buf, bytes, me.s - 1, kSampleTag); });
      }
      for (int i = 0; i < layers.count; ++i) {
        const int a = su.split[static_cast<size_t>(i)], r = su.rep[static_cast<size_t>(i)];
        ps.block_forward(i, engine.gather(a), engine.gather(r));
        engine.release(a);
        engine.release(r);
      }
      std::fill(picked.begin(), picked.end(), 0.0f);
      if (last) {
        ps.head_forward(engine.gather(su.wte), engine.gather(su.lnf));
        engine.release(su.lnf);
        engine.release(su.wte);
        std::fill(full.begin(), full.end(), 0.0f);
        for (int r = 0; r < rows; ++r)
          std::copy_n(ps.logits() + (static_cast<size_t>(r) * window + pos) * vl, vl,
                      full.begin() + static_cast<long>(static_cast<size_t>(r) * V + static_cast<size_t>(me.t) * vl));
        if (t > 1) tensor_ops.all_reduce(full.data(), full.size(), ReduceOp::kSum);
        for (int r = 0; r < rows; ++r) {
          const float* logits = full.data() + static_cast<size_t>(r) * V;
          const int32_t next = r == 0 ? greedy_token(logits, V) : sample_token(logits, V, 0.8, uniform());
          if (me.t == 0 && me.data(shape) == 0)
            picked[static_cast<size_t>(r)] = static_cast<float>(next);  // exact below 2^24
        }
      } else {
        const float* buf = ps.output();
        pipe_op([=] { pipe->send(buf, bytes, me.s + 1, kSampleTag); });
      }
      layout.all_reduce(picked.data(), picked.size(), ReduceOp::kSum);
      for (int r = 0; r < rows; ++r)
        seqs[static_cast<size_t>(r)].push_back(static_cast<int32_t>(picked[static_cast<size_t>(r)]));
    }
    return seqs;
  };

  // --- training -------------------------------------------------------------------------------
  StopSignal stop;
  const LrSchedule schedule{c.lr, c.warmup < 0 ? std::max(1, c.steps / 20) : c.warmup, c.steps, c.min_lr_ratio};
  const io::Sampler sampler(train_data.num_sequences(), c.seed);
  const int data_index = me.data(shape);
  io::Prefetcher prefetcher(train_data, sampler, data_index, D, S, B, static_cast<uint64_t>(start_step));
  Checkpointer ckpt(engine, c, gpt, layout, T, start_step, loaded_from);
  StepPrinter printer(leader, c.steps, c.log_every);
  const comm::Traffic tensor_base = mesh.tensor->traffic(), pipe_base = pipe->traffic();
  // The first step of a run (fresh or resumed) pays for first touches: left out of tokens/s.
  RunTally tally(tokens_per_step, c.steps - start_step > 1 ? start_step + 1 : start_step);
  double pipe_wait_total = 0;
  double eval_loss = NAN;
  bool stopped = false;
  for (int step = start_step; step < c.steps; ++step) {
    const float lr = schedule.at(step);
    engine.set_lr(lr);
    observer.step_begin(step + 1);
    obs::ScopedSpan step_span(ob, "step", "step", step + 1);
    const auto t0 = Clock::now();
    for (int m = 0; m < S; ++m) batches[static_cast<size_t>(m)] = prefetcher.next();
    loss_sum = 0;
    pipe_wait_s = 0;
    run_schedule();
    shard::StepReport report;
    double exposed = 0;
    for (int m = 0; m < S; ++m) {
      report = engine.step();
      exposed += report.exposed_comm_s;
    }
    // The mean loss (summed by the last stage's tensor rank 0 of every data index) and an
    // agreed stop, over every rank: one control all-reduce, not counted as training traffic.
    float control[2] = {last && me.t == 0 ? static_cast<float>(loss_sum) : 0.0f, stop.requested() ? 1.0f : 0.0f};
    comm::Communicator* ctl = mesh.control.get();
    float* cv = control;
    engine.run_on_comm_thread([=] { ctl->all_reduce(cv, cv, 2, DType::kF32, ReduceOp::kSum); });
    const double step_s = seconds_since(t0);
    const double loss = static_cast<double>(control[0]) / (D * S);
    pipe_wait_total += pipe_wait_s;
    StepRecord rec = tally.add(step, loss, lr, report.grad_norm, report.skipped, step_s, exposed);
    if (val_data && c.eval_every > 0 && (step + 1) % c.eval_every == 0 && step + 1 < c.steps && c.eval_batches > 0) {
      rec.eval_loss = evaluate();
      eval_loss = rec.eval_loss;
    }
    {
      const auto ckpt_t0 = Clock::now();
      ckpt.after_step(step + 1);
      rec.checkpoint_ms = seconds_since(ckpt_t0) * 1e3;
    }
    if (report_step(printer, metrics.get(), rec, control[1] > 0)) {
      stopped = true;
      break;
    }
  }
  printer.finish();
  const int steps_done = tally.steps();
  ckpt.finish(start_step + steps_done);
  if (val_data && !stopped && c.eval_batches > 0) eval_loss = evaluate();
  if (c.samples > 0 && !stopped) {
    const comm::Traffic tensor0 = mesh.tensor->traffic(), pipe0 = pipe->traffic(), data0 = engine.traffic();
    const std::vector<int32_t> prompt = sample_prompt(val_data ? *val_data : train_data, T);
    const auto seqs = sample(prompt);
    accumulate(eval_tensor, mesh.tensor->traffic(), tensor0);
    accumulate(eval_pipe, pipe->traffic(), pipe0);
    accumulate(eval_data, engine.traffic(), data0);
    if (leader) std::fputs(format_samples(prompt, seqs, mc.vocab, val_data != nullptr).c_str(), stdout);
  }

  // --- traffic per mesh dimension against the formulas (mesh_trainer.cpp's header) ----------
  const uint64_t steps64 = static_cast<uint64_t>(steps_done), S64 = static_cast<uint64_t>(S);
  comm::Traffic tensor_expected, pipe_expected;
  if (t > 1) {
    const size_t nc = N * static_cast<size_t>(mc.channels), C = static_cast<size_t>(mc.channels);
    const uint64_t Lb = static_cast<uint64_t>(layers.count), rc = c.recompute ? 1 : 0;
    auto op = [&](const char* name, size_t count, uint64_t times) {
      add(tensor_expected, comm::predict_traffic(*mesh.tensor, name, count, DType::kF32), times * S64 * steps64);
    };
    if (c.sequence_parallel) {
      op("all_gather", nc, (6 + 2 * rc) * Lb);
      op("reduce_scatter", nc, (4 + 2 * rc) * Lb);
      op("all_reduce", 6 * C, Lb);
      if (first) op("reduce_scatter", nc, 1), op("all_gather", nc, 1);
      if (last) op("all_gather", nc, 2), op("reduce_scatter", nc, 1), op("all_reduce", N, 1), op("all_reduce", 2 * N, 1),
          op("all_reduce", 2 * C, 1);
    } else {
      op("all_reduce", nc, (4 + 2 * rc) * Lb);
      if (first) op("all_reduce", nc, 1);
      if (last) op("all_reduce", N, 1), op("all_reduce", 2 * N, 1), op("all_reduce", nc, 1);
    }
  }
  if (!last)
    pipe_expected.bytes_sent[static_cast<size_t>(rt->transport().rail_to(pipe->global_rank(me.s + 1)))] += act_bytes * S64 * steps64;
  if (!first)
    pipe_expected.bytes_sent[static_cast<size_t>(rt->transport().rail_to(pipe->global_rank(me.s - 1)))] += act_bytes * S64 * steps64;
  const comm::Traffic tensor_sent = minus(minus(mesh.tensor->traffic(), tensor_base), eval_tensor);
  const comm::Traffic pipe_sent = minus(minus(pipe->traffic(), pipe_base), eval_pipe);
  const comm::Traffic data_sent = minus(engine.traffic(), eval_data), data_expected = engine.expected_traffic(steps_done);
  float flags[3] = {same_bytes(tensor_sent, tensor_expected) ? 0.0f : 1.0f, same_bytes(pipe_sent, pipe_expected) ? 0.0f : 1.0f,
                    same_bytes(data_sent, data_expected) ? 0.0f : 1.0f};
  {
    comm::Communicator* ctl = mesh.control.get();
    float* fv = flags;
    engine.run_on_comm_thread([=] { ctl->all_reduce(fv, fv, 3, DType::kF32, ReduceOp::kMax); });
  }
  if (flags[0] + flags[1] + flags[2] > 0)
    log::warn("traffic differs from the mesh formulas: tensor {}/{} {}/{}, pipeline {}/{} {}/{}, data {}/{} {}/{} (intra, inter: sent/expected)",
              tensor_sent.bytes_sent[kIntra], tensor_expected.bytes_sent[kIntra], tensor_sent.bytes_sent[kInter],
              tensor_expected.bytes_sent[kInter], pipe_sent.bytes_sent[kIntra], pipe_expected.bytes_sent[kIntra],
              pipe_sent.bytes_sent[kInter], pipe_expected.bytes_sent[kInter], data_sent.bytes_sent[kIntra],
              data_expected.bytes_sent[kIntra], data_sent.bytes_sent[kInter], data_expected.bytes_sent[kInter]);
  auto per_step = [&](const comm::Traffic& tr) {
    const double n = std::max(1, steps_done);
    return nlohmann::json::array({static_cast<double>(tr.bytes_sent[kIntra]) / n, static_cast<double>(tr.bytes_sent[kInter]) / n});
  };
  // Activations kept for the backward on this rank: every in-flight micro-batch's pass.
  uint64_t act_kept = 0, act_ln = 0;
  for (const auto& ps : passes) act_kept += ps->activation_bytes(), act_ln += ps->layernorm_region_bytes();
  nlohmann::json mj;
  mj["mesh"] = {{"r", shape.r}, {"p", shape.p}, {"s", s}, {"t", t}, {"order", shape.order},
                {"sequence_parallel", c.sequence_parallel}, {"recompute", c.recompute},
                {"activation_bytes", act_kept}, {"layernorm_region_bytes", act_ln},
                {"micro_batches_in_flight", passes.size()},
                {"schedule", schedule_name}, {"bubble_fraction", bubble},
                {"pipeline_wait_ms_per_step", steps_done ? pipe_wait_total * 1e3 / steps_done : 0.0},
                {"tensor_bytes_per_step", per_step(tensor_sent)}, {"pipeline_bytes_per_step", per_step(pipe_sent)},
                {"data_bytes_per_step", per_step(data_sent)}, {"tensor_matches", flags[0] == 0.0f},
                {"pipeline_matches", flags[1] == 0.0f}, {"data_matches", flags[2] == 0.0f}};
  Summary sum;
  sum.strategy = on_gpu ? c.strategy + " (mesh stages on GPUs)" : c.strategy;
  sum.model = c.model;
  sum.world_size = world;
  sum.nodes = topology.num_nodes;
  sum.partition_size = p;
  sum.grad_accum = S;
  sum.micro_batch = B;
  sum.seq_len = T;
  tally.fill(sum);
  sum.host_cores = usable_cores();
  sum.ranks_on_host = ranks_on_host();
  sum.compute_threads = threads;
  sum.stopped_early = stopped;
  sum.eval_loss = eval_loss;
  const comm::Traffic all = [&] {
    comm::Traffic a;
    add(a, tensor_sent), add(a, pipe_sent), add(a, data_sent);
    return a;
  }();
  sum.intra_node_bytes_per_step = steps_done ? static_cast<double>(all.bytes_sent[kIntra]) / steps_done : 0;
  sum.inter_node_bytes_per_step = steps_done ? static_cast<double>(all.bytes_sent[kInter]) / steps_done : 0;
  sum.traffic_matches_model = flags[0] + flags[1] + flags[2] == 0.0f;
  sum.model_state_bytes_per_rank = engine.memory().model_state_bytes;
  sum.recompute = c.recompute;
  sum.activation_bytes = act_kept / passes.size();  // the summary says "per micro-batch"
  sum.params = mc.num_params();
  sum.flops_per_token = mc.flops_per_token(T);
  // The collectives' records (the observer knows collectives only) plus the pipeline's
  // point-to-point bytes must add up to the fabric counters, on every rank.
  {
    mj["collectives"] = nlohmann::json::parse(observer.log().summary_json());
    const auto base = observer.fabric_baseline();
    const auto recorded = observer.log().rail_totals();
    const comm::Traffic& p2p = pipe->traffic();
    const uint64_t fabric_intra = rt->transport().counters(fabric::Rail::kIntra).bytes_sent - base[0];
    const uint64_t fabric_inter = rt->transport().counters(fabric::Rail::kInter).bytes_sent - base[1];
    float mismatch = recorded[0] + p2p.bytes_sent[kIntra] == fabric_intra && recorded[1] + p2p.bytes_sent[kInter] == fabric_inter
                         ? 0.0f
                         : 1.0f;
    comm::Communicator* ctl = mesh.control.get();
    float* mv = &mismatch;
    engine.run_on_comm_thread([=] { ctl->all_reduce(mv, mv, 1, DType::kF32, ReduceOp::kMax); });
    mj["collectives"]["fabric_rail_bytes"] = {fabric_intra, fabric_inter};
    mj["collectives"]["pipeline_rail_bytes"] = {p2p.bytes_sent[kIntra], p2p.bytes_sent[kInter]};
    mj["collectives"]["records_match_fabric"] = mismatch == 0.0f;
    mj["clock_sync"] = {{"offset_ns", observer.clock().offset_ns}, {"rtt_ns", observer.clock().rtt_ns}};
  }
  sum.observability_json = mj.dump();
  if (!c.trace.empty()) {
    const auto base = observer.fabric_baseline();
    const nlohmann::json other = {{"command", "mics train"}, {"model", c.model}, {"strategy", c.strategy},
                                  {"mesh", shape.describe()}, {"sequence_parallel", c.sequence_parallel},
                                  {"fabric_rail_bytes", {rt->transport().counters(fabric::Rail::kIntra).bytes_sent - base[0],
                                                         rt->transport().counters(fabric::Rail::kInter).bytes_sent - base[1]}}};
    observer.write_trace(obs::trace_path_for_rank(c.trace, rank), other.dump());
  }
  if (leader) {
    std::fputs(format_summary(sum).c_str(), stdout);
    std::fputs(fmt::format("  mesh: tensor {:.0f}/{:.0f} B, pipeline {:.0f}/{:.0f} B, data {:.0f}/{:.0f} B per step "
                           "(intra/inter, rank 0); bubble {:.3f}\n",
                           per_step(tensor_sent)[0].get<double>(), per_step(tensor_sent)[1].get<double>(),
                           per_step(pipe_sent)[0].get<double>(), per_step(pipe_sent)[1].get<double>(),
                           per_step(data_sent)[0].get<double>(), per_step(data_sent)[1].get<double>(), bubble)
                   .c_str(),
               stdout);
    std::fputs(fmt::format("  activations kept (rank 0, {} micro-batches in flight): {:.1f} KiB, of which LayerNorm "
                           "regions {:.1f} KiB{}{}\n",
                           passes.size(), static_cast<double>(act_kept) / 1024, static_cast<double>(act_ln) / 1024,
                           c.sequence_parallel ? fmt::format(" (sequence parallel: 1/{})", t) : "",
                           c.recompute ? " (recompute: one block's)" : "")
                   .c_str(),
               stdout);
    std::fflush(stdout);
    if (metrics) metrics->summary(sum);
  }
  rt->finish();
  return 0;
}

}  // namespace mics::train
