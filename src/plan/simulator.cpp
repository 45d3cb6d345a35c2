// The step simulator (see simulator.hpp).
#include "plan/simulator.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "base/error.hpp"

namespace mics::plan {

namespace {

Error spec_error(const std::string& message, const std::string& hint) {
  return Error(ErrorKind::kInvalidArgument, message, {.layer = "plan", .where = "planning a run", .hint = hint});
}

// One compute op of a micro-step.
struct Op {
  int unit;
  std::string what;
  double flops_per_token;  // this op's compute
  double memory_passes;    // elementwise passes over the layer's activations (accelerators)
  bool gather;             // needs the unit gathered first
  bool reduce;             // its gradient is reduced after it
  bool grads_done;         // the unit's gradient of this micro-step is complete after it
  // Its gather can be issued ahead, during earlier compute (prefetch). Not when the op before
  // it used and released the same unit (the engine drops a released copy and a prefetch of a
  // gathered unit does nothing): the MLP bench's first forward of a micro-step (the previous
  // backward ended on that layer) and its first backward (the forward ended on it).
  bool prefetchable = true;
};

// The engine bench's micro-step (src/tools/engine_bench.cpp): layers 0..L-1 forward, L-1..0
// backward, each gathered before use and released after, the next layer prefetched once the
// current one is gathered; every backward's gradient reduce-scattered.
std::vector<Op> mlp_micro_step_ops(const ModelDesc& m, bool sharded) {
  std::vector<Op> ops;
  const int L = m.mlp_layers;
  for (int l = 0; l < L; ++l)
    ops.push_back({l, fmt::format("fwd layer.{}", l), m.unit_forward_flops_per_token(l, 1), 0.0, sharded, false, false,
                   l > 0});
  for (int l = L - 1; l >= 0; --l)
    ops.push_back({l, fmt::format("bwd layer.{}", l), m.mlp_unit_backward_flops(l), 0.0, sharded, sharded, true,
                   l < L - 1});
  return ops;
}

std::vector<Op> micro_step_ops(const ModelDesc& m, int seq_len, bool recompute, bool sharded) {
  if (m.is_mlp()) return mlp_micro_step_ops(m, sharded);
  std::vector<Op> ops;
  const int L = m.config.layers;
  const double u0 = m.unit_forward_flops_per_token(0, seq_len);
  ops.push_back({0, "fwd embed", 0.0, 0.0, sharded, false, false});
  for (int l = 1; l <= L; ++l)
    ops.push_back(
        {l, fmt::format("fwd block.{}", l - 1), m.unit_forward_flops_per_token(l, seq_len), 1.0, sharded, false, false});
  ops.push_back({0, "fwd head", u0, 0.0, sharded, false, false});
  ops.push_back({0, "bwd head", 2 * u0, 0.0, false, false, false});
  for (int l = L; l >= 1; --l)
    ops.push_back({l, fmt::format("bwd block.{}", l - 1),
                   (recompute ? 3.0 : 2.0) * m.unit_forward_flops_per_token(l, seq_len), recompute ? 3.0 : 2.0,
                   sharded, sharded, true});
  ops.push_back({0, "bwd embed", 0.0, 0.0, false, sharded, true});
  return ops;
}

std::string unit_name(const ModelDesc& m, int unit) {
  if (m.is_mlp()) return fmt::format("layer.{}", unit);
  return unit == 0 ? "embed" : fmt::format("block.{}", unit - 1);
}

// A FIFO stream: an op issued at t starts when the stream is free.
struct Fifo {
  Stream stream;
  double free_at = 0, busy = 0;
  Event run(std::vector<Event>& out, const std::string& what, int micro, int unit, double issued, double duration) {
    Event e{stream, what, micro, unit, std::max(issued, free_at), 0};
    e.end = e.start + duration;
    free_at = e.end;
    busy += duration;
    out.push_back(e);
    return e;
  }
};

}  // namespace

const char* to_string(Stream s) {
  switch (s) {
    case Stream::kCompute:
      return "compute";
    case Stream::kGather:
      return "gather";
    default:
      return "reduce";
  }
}

RunSpec resolve(RunSpec s) {
  if (s.world < 1) throw spec_error(fmt::format("--gpus must be >= 1, not {}", s.world), "pass the accelerator count");
  if (s.micro_batch < 1 || s.grad_accum < 1)
    throw spec_error(fmt::format("micro-batch {} and grad-accum {} must be >= 1", s.micro_batch, s.grad_accum),
                     "pass positive --micro-batch and --grad-accum");
  if (s.seq_len <= 0) s.seq_len = s.model.default_seq_len();
  if (s.model.is_mlp() && (s.seq_len != 1 || s.recompute))
    throw spec_error(fmt::format("the MLP {} has no sequence and no recompute (seq_len {}{})", s.model.name, s.seq_len,
                                 s.recompute ? ", recompute" : ""),
                     "leave --seq-len and --recompute out for an mlpL..W.. model: its micro-batch counts samples");
  const int n = std::min(s.world, s.cluster.gpus_per_node);
  if (s.world % n != 0)
    throw spec_error(fmt::format("{} accelerators are not whole {} nodes of {}", s.world, s.cluster.name, n),
                     fmt::format("use a multiple of {}", n));
  try {
    s.partition_size = topo::resolve_partition_size(s.strategy, s.partition_size, s.world, n);
  } catch (const Error& e) {
    throw Error(ErrorKind::kInvalidArgument, e.message(),
                {.layer = "plan", .where = "--partition-size", .hint = e.context().hint});
  }
  return s;
}

StepPrediction simulate(const RunSpec& input, const CostParams& params) {
  StepPrediction pr;
  pr.spec = resolve(input);
  const RunSpec& s = pr.spec;
  const Cluster& cl = s.cluster;
  const int p = s.partition_size, N = s.world, r = N / p;
  pr.partition_size = p;
  pr.replicas = r;
  pr.memory = memory_plan(s.model, cl, N, p, s.micro_batch, s.seq_len, s.recompute);

  const CollectiveModel cm(rails_at_core_sharing(cl, s.ranks_on_host > 0 ? s.ranks_on_host : N), params, N);
  const bool sharded = p > 1;
  const bool hierarchical = !(s.strategy == topo::Strategy::kZero3 && s.flat_zero3_gather && !cl.cpu_engine);
  const double param_bytes = cl.cpu_engine ? 4 : 2, grad_bytes = cl.cpu_engine ? 4 : 2;
  const auto sizes = s.model.unit_sizes();
  const auto padded = [N](uint64_t numel) { return static_cast<double>((numel + N - 1) / N * N); };
  const double tokens = static_cast<double>(s.micro_batch) * s.seq_len;
  // An oversubscribed host: each rank's compute (and its optimizer) at its share of a core.
  const int on_host = s.ranks_on_host > 0 ? s.ranks_on_host : N;
  pr.core_share = cl.cpu_engine && cl.host_cores > 0 && on_host > cl.host_cores
                      ? static_cast<double>(cl.host_cores) / on_host
                      : 1.0;
  const double flops_rate = cl.peak_flops * params.compute_efficiency * pr.core_share;
  // Accelerators: a layer's elementwise work (LayerNorm, GELU, softmax, dropout, residuals) is
  // bound by memory bandwidth, not FLOPs: per forward pass its activations (Korthikanti et al.)
  // written once and read once at HBM bandwidth; the backward twice that. Not fitted. The CPU
  // engine's compute efficiency covers everything (calibrated).
  const double elementwise_s =
      cl.cpu_engine ? 0.0 : 2.0 * s.model.layer_activation_bytes(s.micro_batch, s.seq_len) / cl.memory_bandwidth;

  const auto gather_time = [&](int u) { return cm.partition_all_gather(p, padded(sizes[u]) * param_bytes, hierarchical); };
  const auto rs_time = [&](int u) { return cm.partition_reduce_scatter(p, padded(sizes[u]) * grad_bytes); };
  const auto ar_time = [&](int u) {
    const double shard = (p == 1 ? static_cast<double>(sizes[u]) : padded(sizes[u]) / p) * grad_bytes;
    return r > 1 ? cm.replication_all_reduce(p, shard) : 0.0;
  };

  const std::vector<Op> one = micro_step_ops(s.model, s.seq_len, s.recompute, sharded);
  struct Flat {
    Op op;
    int micro;
    bool last_use_of_grad;  // the unit's last backward in the step (unit 0: embed bwd)
    bool ends_micro_step;
  };
  std::vector<Flat> ops;
  for (int m = 0; m < s.grad_accum; ++m)
    for (size_t k = 0; k < one.size(); ++k)
      ops.push_back({one[k], m, m == s.grad_accum - 1 && one[k].grads_done, k + 1 == one.size()});

  Fifo compute{Stream::kCompute}, gather{Stream::kGather}, reduce{Stream::kReduce};
  Fifo& reducer = cl.cpu_engine ? gather : reduce;  // one communication thread on the CPU engine
  std::vector<Event>& tl = pr.timeline;
  // A CPU-bound host (more ranks than cores): the cores are what every rank waits for, and on
  // loopback the rails' time is the cores' time too, so communication hides behind nothing:
  // no prefetch, and the compute waits for each reduction (measured: bench/plan_calibration*.sh,
  // docs/PLANNING.md).
  const bool cpu_bound = pr.core_share < 1;
  const int depth = cpu_bound ? 0 : std::max(0, s.prefetch_depth);
  std::vector<double> gather_end(ops.size(), 0.0);
  std::vector<bool> issued(ops.size(), false);
  const auto issue_gather = [&](size_t i, double at) {
    if (i >= ops.size() || !ops[i].op.gather || issued[i]) return;
    issued[i] = true;
    gather_end[i] = gather.run(tl, "all_gather " + unit_name(s.model, ops[i].op.unit), ops[i].micro, ops[i].op.unit, at,
                               gather_time(ops[i].op.unit)).end;
  };
  for (size_t i = 0; i < static_cast<size_t>(depth) && i < ops.size() && ops[i].op.prefetchable; ++i)
    issue_gather(i, 0.0);
  const bool boundary_in_backward = !cl.cpu_engine;
  const bool sync_micro = s.sync_reductions_each_micro_step < 0 ? !cl.cpu_engine : s.sync_reductions_each_micro_step > 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const Flat& f = ops[i];
    // No prefetch (or none possible for this op): gathered when the compute reaches it.
    issue_gather(i, compute.free_at);
    const double ready = f.op.gather ? gather_end[i] : 0.0;
    const double start = std::max(compute.free_at, ready);
    // Prefetch: the gathers up to `depth` ops ahead that may start early, once this op has its
    // parameters (the drivers gather, then prefetch the next unit). Stop at the first that
    // may not: its unit is still in use, and the ones behind it keep the FIFO's order.
    for (size_t k = i + 1; depth > 0 && k <= i + static_cast<size_t>(depth) && k < ops.size(); ++k) {
      if (!ops[k].op.prefetchable) break;
      issue_gather(k, start);
    }
    const double duration = f.op.flops_per_token * tokens / flops_rate + f.op.memory_passes * elementwise_s;
    const Event c = compute.run(tl, f.op.what, f.micro, f.op.unit, start, duration);
    if (f.op.reduce)
      reducer.run(tl, "reduce_scatter " + unit_name(s.model, f.op.unit), f.micro, f.op.unit, c.end, rs_time(f.op.unit));
    if (r > 1 && f.op.grads_done && (s.all_reduce_every_micro_step || (f.last_use_of_grad && boundary_in_backward)))
      reducer.run(tl, "all_reduce " + unit_name(s.model, f.op.unit), f.micro, f.op.unit, c.end, ar_time(f.op.unit));
    if (cpu_bound || (sync_micro && f.ends_micro_step)) compute.free_at = std::max(compute.free_at, reducer.free_at);
  }
  if (r > 1 && !boundary_in_backward && !s.all_reduce_every_micro_step) {
    // The CPU engine's step(): one all-reduce of the concatenated gradient shards.
    double shard_bytes = 0;
    for (uint64_t numel : sizes)
      shard_bytes += (p == 1 ? static_cast<double>(numel) : padded(numel) / p) * grad_bytes;
    reducer.run(tl, "all_reduce gradients", s.grad_accum - 1, -1, compute.free_at,
                cm.replication_all_reduce(p, shard_bytes));
  }

  // The optimizer: AdamW over this rank's shard, bound by memory bandwidth (read master, grad,
  // 2 moments; write master, 2 moments, zero the grad: 32 bytes per parameter).
  double shard_params = 0;
  for (uint64_t numel : sizes) shard_params += p == 1 ? static_cast<double>(numel) : padded(numel) / p;
  const double comm_done = std::max(gather.free_at, reduce.free_at);
  const Event opt = compute.run(tl, "optimizer", s.grad_accum - 1, -1, comm_done, 32.0 * shard_params / cl.memory_bandwidth / pr.core_share);

  pr.step_s = opt.end;
  pr.optimizer_s = opt.end - opt.start;
  pr.compute_s = compute.busy;
  pr.exposed_comm_s = pr.step_s - pr.compute_s;
  pr.gather_busy_s = gather.busy;
  pr.reduce_busy_s = reduce.busy;
  const double step_tokens_per_gpu = tokens * s.grad_accum;
  pr.tflops_per_gpu = s.model.flops_per_token(s.seq_len) * step_tokens_per_gpu / pr.step_s / 1e12;
  pr.mfu = pr.tflops_per_gpu * 1e12 / cl.peak_flops;
  pr.tokens_per_s = step_tokens_per_gpu * N / pr.step_s;
  return pr;
}

}  // namespace mics::plan
