#include "shard/cuda_engine.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "base/clock.hpp"
#include "base/log.hpp"
#include "comm/traffic_model.hpp"

#ifdef MICS_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace mics::shard {

#ifdef MICS_HAVE_CUDA
namespace cuda {
void add_into(float* acc, const float* x, size_t n, void* stream);  // shard/cuda/engine_kernels.cu
void to_bf16(const float* x, void* out, size_t n, void* stream);
}

namespace {

void check(cudaError_t err, const char* call) {
  if (err != cudaSuccess)
    throw Error(ErrorKind::kUnavailable, fmt::format("{} failed: {}: {}", call, cudaGetErrorName(err), cudaGetErrorString(err)),
                {.layer = "shard", .where = "GPU sharded engine", .hint = "check the GPU with mics doctor and nvidia-smi"});
}
#define MICS_ENGINE_CUDA(call) check((call), #call)

cudaStream_t st(comm::GpuStream s) { return static_cast<cudaStream_t>(s); }

void add_to(comm::Traffic& total, const comm::Traffic& t, uint64_t times = 1) {
  for (int i = 0; i < fabric::kNumRails; ++i) {
    total.bytes_sent[i] += t.bytes_sent[i] * times;
    total.msgs_sent[i] += t.msgs_sent[i] * times;
  }
}

comm::Traffic minus(const comm::Traffic& a, const comm::Traffic& b) {
  comm::Traffic t;
  for (int i = 0; i < fabric::kNumRails; ++i) {
    t.bytes_sent[i] = a.bytes_sent[i] - b.bytes_sent[i];
    t.msgs_sent[i] = a.msgs_sent[i] - b.msgs_sent[i];
  }
  return t;
}

}  // namespace

struct CudaEngine::Impl {
  comm::Runtime& runtime;
  CudaEngineOptions options;
  DeviceOptimizer ops;
  topo::Groups groups;
  std::unique_ptr<comm::Communicator> world;  // control all-reduces (not in traffic())
  std::unique_ptr<comm::GpuComm> partition, replication;  // null for a group of one
  int N = 1, p = 1, r = 1;
  std::vector<size_t> numel, padded, offset;  // per unit; offset: where its shard starts in ours
  size_t shard = 0, max_shard = 0;
  float *master = nullptr, *acc = nullptr, *m = nullptr, *v = nullptr, *rs_out = nullptr, *norm_sq = nullptr;
  float* host_norm = nullptr;
  void* stage_bf16 = nullptr;  // bf16 gathers: this rank's shard of the unit being gathered
  cudaStream_t cs = nullptr;
  cudaEvent_t compute_done = nullptr, comm_done = nullptr;
  std::vector<cudaEvent_t> ready;  // per unit: its last gather finished
  std::vector<int> reduced;        // per unit: reduce() calls since the last step
  // per gradient buffer the model hands to reduce(): recorded after the reduce-scatter read it
  std::vector<std::pair<const float*, cudaEvent_t>> buffer_read;
  int64_t steps = 0;
  int consecutive_skips = 0;
  comm::Traffic base;

  Impl(comm::Runtime& rt, const CudaEngineOptions& o, DeviceOptimizer d) : runtime(rt), options(o), ops(std::move(d)) {}
  ~Impl() {
    if (cs) cudaStreamSynchronize(cs);
    for (float* f : {master, acc, m, v, rs_out, norm_sq})
      if (f) cudaFree(f);
    if (host_norm) cudaFreeHost(host_norm);
    if (stage_bf16) cudaFree(stage_bf16);
    for (cudaEvent_t e : ready) cudaEventDestroy(e);
    for (auto& [buffer, e] : buffer_read) cudaEventDestroy(e);
    if (compute_done) cudaEventDestroy(compute_done);
    if (comm_done) cudaEventDestroy(comm_done);
    if (cs) cudaStreamDestroy(cs);
  }

  comm::Traffic raw_traffic() const {
    comm::Traffic t;
    if (partition) add_to(t, partition->traffic());
    if (replication) add_to(t, replication->traffic());
    return t;
  }
  // After the compute stream's work so far.
  void follow(comm::GpuStream compute) {
    MICS_ENGINE_CUDA(cudaEventRecord(compute_done, st(compute)));
    MICS_ENGINE_CUDA(cudaStreamWaitEvent(cs, compute_done, 0));
  }
  void lead(comm::GpuStream compute) {
    MICS_ENGINE_CUDA(cudaEventRecord(comm_done, cs));
    MICS_ENGINE_CUDA(cudaStreamWaitEvent(st(compute), comm_done, 0));
  }
  void check_unit(int u, const char* what) const {
    if (u < 0 || static_cast<size_t>(u) >= numel.size())
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{}: unit {} of {}", what, u, numel.size()),
                  {.layer = "shard", .where = "GPU sharded engine"});
  }
  void gather(int u, float* dst, void* dst_bf16, comm::GpuStream compute) {
    check_unit(u, "gather");
    follow(compute);  // dst's previous contents were read by the model's work so far
    const size_t k = static_cast<size_t>(u);
    if (options.gather_dtype == DType::kBF16) {
      if (partition) {
        cuda::to_bf16(master + offset[k], stage_bf16, padded[k] / static_cast<size_t>(p), cs);
        partition->all_gather(stage_bf16, dst_bf16, padded[k], DType::kBF16, cs);
      } else {
        cuda::to_bf16(master + offset[k], dst_bf16, padded[k], cs);
      }
    } else if (partition)
      partition->all_gather(master + offset[k], dst, padded[k], DType::kF32, cs);
    else
      MICS_ENGINE_CUDA(cudaMemcpyAsync(dst, master + offset[k], padded[k] * sizeof(float), cudaMemcpyDeviceToDevice, cs));
    MICS_ENGINE_CUDA(cudaEventRecord(ready[k], cs));
  }
  void wait(int u, comm::GpuStream compute) {
    check_unit(u, "wait");
    MICS_ENGINE_CUDA(cudaStreamWaitEvent(st(compute), ready[static_cast<size_t>(u)], 0));
  }
  void reduce(int u, const float* grads, comm::GpuStream compute) {
    check_unit(u, "reduce");
    const size_t k = static_cast<size_t>(u);
    if (reduced[k] >= options.grad_accum)
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("unit {} reduced {} times before step() (grad_accum {})", u, reduced[k] + 1, options.grad_accum),
                  {.layer = "shard", .where = "GPU sharded engine"});
    follow(compute);
    const size_t n = padded[k] / static_cast<size_t>(p);
    if (partition) {
      partition->reduce_scatter(grads, rs_out, padded[k], DType::kF32, ReduceOp::kSum, cs);
      cuda::add_into(acc + offset[k], rs_out, n, cs);
    } else {
      cuda::add_into(acc + offset[k], grads, n, cs);
    }
    MICS_ENGINE_CUDA(cudaEventRecord(read_event(grads), cs));
    // The unit's accumulated shard is final: its 2-hop all-reduce across the replicas now, on
    // the engine's stream, while the model computes the units before it.
    if (++reduced[k] == options.grad_accum && replication)
      replication->all_reduce(acc + offset[k], acc + offset[k], n, DType::kF32, ReduceOp::kSum, cs);
  }
  cudaEvent_t read_event(const float* grads) {
    for (auto& [buffer, e] : buffer_read)
      if (buffer == grads) return e;
    cudaEvent_t e = nullptr;
    MICS_ENGINE_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    buffer_read.emplace_back(grads, e);
    return e;
  }
  void reuse(const float* grads, comm::GpuStream compute) {
    for (auto& [buffer, e] : buffer_read)
      if (buffer == grads) MICS_ENGINE_CUDA(cudaStreamWaitEvent(st(compute), e, 0));
  }
};

CudaEngine::CudaEngine(comm::Runtime& runtime, const CudaEngineOptions& options, std::vector<size_t> unit_numel,
                       DeviceOptimizer ops)
    : impl_(std::make_unique<Impl>(runtime, options, std::move(ops))) {
  Impl& s = *impl_;
  if (options.grad_accum < 1)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("grad_accum {} < 1", options.grad_accum), {.layer = "shard"});
  comm::Communicator& job = runtime.world();
  s.N = job.size();
  const int per_node = runtime.topology().uniform_ranks_per_node() ? runtime.topology().uniform_ranks_per_node() : s.N;
  s.p = topo::resolve_partition_size(options.strategy, options.partition_size, s.N, per_node);
  s.r = s.N / s.p;
  s.groups = topo::build_groups(job, s.p);
  s.world = job.split(0, job.rank(), "gpu-engine-world");
  if (s.groups.partition->num_nodes() > 1 && s.groups.partition->members_per_node() > 1)
    s.groups.partition->cross_node();  // the hierarchical all-gather's sub-communicators, now
  if (s.p > 1) s.partition = comm::make_gpu_comm(options.backend, *s.groups.partition, runtime.store());
  if (s.r > 1) s.replication = comm::make_gpu_comm(options.backend, *s.groups.replication, runtime.store());
  s.base = s.raw_traffic();
  s.numel = std::move(unit_numel);
  const size_t n = static_cast<size_t>(s.N), units = s.numel.size();
  size_t total = 0;
  for (size_t u = 0; u < units; ++u) {
    s.padded.push_back((s.numel[u] + n - 1) / n * n);
    s.offset.push_back(s.shard);
    const size_t part = s.padded[u] / static_cast<size_t>(s.p);
    s.shard += part;
    s.max_shard = std::max(s.max_shard, part);
    total += s.numel[u];
  }
  s.reduced.assign(units, 0);
  for (float** f : {&s.master, &s.acc, &s.m, &s.v}) MICS_ENGINE_CUDA(cudaMalloc(f, std::max<size_t>(s.shard, 1) * sizeof(float)));
  MICS_ENGINE_CUDA(cudaMalloc(&s.rs_out, std::max<size_t>(s.max_shard, 1) * sizeof(float)));
  MICS_ENGINE_CUDA(cudaMalloc(&s.norm_sq, sizeof(float)));
  if (options.gather_dtype == DType::kBF16) MICS_ENGINE_CUDA(cudaMalloc(&s.stage_bf16, std::max<size_t>(s.max_shard, 1) * 2));
  else if (options.gather_dtype != DType::kF32)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("gather dtype {}: f32 or bf16", to_string(options.gather_dtype)),
                {.layer = "shard", .where = "GPU sharded engine"});
  MICS_ENGINE_CUDA(cudaMallocHost(&s.host_norm, sizeof(float)));
  // The collectives' stream gets the highest priority (as FSDP2's all-gather and reduce-scatter
  // streams): their kernels take SMs as soon as blocks of the model's kernels retire, instead
  // of queueing behind whole waves of a GEMM while the model waits for the next unit.
  int lowest_priority = 0, highest_priority = 0;
  MICS_ENGINE_CUDA(cudaDeviceGetStreamPriorityRange(&lowest_priority, &highest_priority));
  MICS_ENGINE_CUDA(cudaStreamCreateWithPriority(&s.cs, cudaStreamNonBlocking, highest_priority));
  MICS_ENGINE_CUDA(cudaEventCreateWithFlags(&s.compute_done, cudaEventDisableTiming));
  MICS_ENGINE_CUDA(cudaEventCreateWithFlags(&s.comm_done, cudaEventDisableTiming));
  s.ready.assign(units, nullptr);
  for (cudaEvent_t& e : s.ready) MICS_ENGINE_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  if (job.rank() == 0)
    log::info("gpu engine: {} with p={} r={} over {}; GPU collectives: {}; {} units, {} floats, {} per rank's shard "
              "(units gathered per use, gradients reduce-scattered per unit)",
              topo::to_string(options.strategy), s.p, s.r, runtime.topology().describe(),
              comm::to_string(options.backend), units, total, s.shard);
}

CudaEngine::~CudaEngine() = default;

int CudaEngine::world_size() const { return impl_->N; }
size_t CudaEngine::unit_padded(int unit) const { return impl_->padded.at(static_cast<size_t>(unit)); }
size_t CudaEngine::shard_size() const { return impl_->shard; }

void CudaEngine::finalize(const std::function<void(int unit, float* host)>& init) {
  Impl& s = *impl_;
  const size_t member = static_cast<size_t>(s.groups.partition->rank());
  std::vector<float> host;
  for (size_t u = 0; u < s.numel.size(); ++u) {
    host.assign(s.padded[u], 0.0f);
    init(static_cast<int>(u), host.data());
    const size_t n = s.padded[u] / static_cast<size_t>(s.p);
    MICS_ENGINE_CUDA(cudaMemcpy(s.master + s.offset[u], host.data() + member * n, n * sizeof(float), cudaMemcpyHostToDevice));
  }
  for (float* f : {s.acc, s.m, s.v}) MICS_ENGINE_CUDA(cudaMemsetAsync(f, 0, s.shard * sizeof(float), s.cs));
  MICS_ENGINE_CUDA(cudaStreamSynchronize(s.cs));
}

UnitSource CudaEngine::unit_source() {
  Impl* s = impl_.get();
  UnitSource src;
  src.gather = [s](int u, float* dst, void* dst_bf16, comm::GpuStream stream) { s->gather(u, dst, dst_bf16, stream); };
  src.bf16_gathers = s->options.gather_dtype == DType::kBF16;
  src.wait = [s](int u, comm::GpuStream stream) { s->wait(u, stream); };
  src.reduce = [s](int u, const float* grads, comm::GpuStream stream) { s->reduce(u, grads, stream); };
  src.reuse = [s](const float* grads, comm::GpuStream stream) { s->reuse(grads, stream); };
  return src;
}

CudaStepReport CudaEngine::step(float lr, comm::GpuStream stream) {
  Impl& s = *impl_;
  for (size_t u = 0; u < s.reduced.size(); ++u)
    if (s.reduced[u] != s.options.grad_accum)
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("step() after {} reduce calls of unit {} (grad_accum {})", s.reduced[u], u, s.options.grad_accum),
                  {.layer = "shard", .where = "GPU sharded engine"});
  std::fill(s.reduced.begin(), s.reduced.end(), 0);
  const auto t0 = Clock::now();
  CudaStepReport report;
  s.follow(stream);  // the replication all-reduces were enqueued by the last reduce of each unit
  s.ops.sum_squares(s.acc, s.shard, s.norm_sq, s.cs);
  if (s.partition) s.partition->all_reduce(s.norm_sq, s.norm_sq, 1, DType::kF32, ReduceOp::kSum, s.cs);
  const float scale = 1.0f / static_cast<float>(s.N * s.options.grad_accum);
  const AdamWStep a{lr, s.options.beta1, s.options.beta2, s.options.eps, s.options.weight_decay, scale,
                    s.options.clip_norm, s.steps + 1};
  s.ops.adamw(s.master, s.acc, s.m, s.v, s.shard, s.norm_sq, a, s.cs);
  MICS_ENGINE_CUDA(cudaMemsetAsync(s.acc, 0, s.shard * sizeof(float), s.cs));
  MICS_ENGINE_CUDA(cudaMemcpyAsync(s.host_norm, s.norm_sq, sizeof(float), cudaMemcpyDeviceToHost, s.cs));
  s.lead(stream);
  if (s.partition)
    s.partition->synchronize(s.cs, "the optimizer step");
  else if (s.replication)
    s.replication->synchronize(s.cs, "the optimizer step");
  else
    MICS_ENGINE_CUDA(cudaStreamSynchronize(s.cs));
  report.comm_wait_s = seconds_since(t0);
  const double nsq = *s.host_norm;
  report.grad_norm = std::sqrt(nsq) * scale;
  if (!std::isfinite(nsq)) {
    report.skipped = true;
    ++s.consecutive_skips;
    if (s.runtime.rank() == 0)
      log::warn("step {} skipped: the global gradient norm is {} (non-finite)", s.steps + 1, report.grad_norm);
    if (s.consecutive_skips > s.options.max_skipped_steps)
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("{} optimizer steps in a row had non-finite gradients", s.consecutive_skips),
                  {.layer = "shard", .where = "the optimizer step (GPU)",
                   .hint = "lower the learning rate, check the data and the loss for inf/NaN"});
  } else {
    s.consecutive_skips = 0;
    ++s.steps;
  }
  return report;
}

std::vector<StateRange> CudaEngine::checkpoint_ranges() const {
  const Impl& s = *impl_;
  const size_t member = static_cast<size_t>(s.groups.partition->rank());
  const size_t replica = static_cast<size_t>(s.groups.replication->rank());
  std::vector<StateRange> out;
  for (size_t u = 0; u < s.numel.size(); ++u) {
    const size_t len = s.padded[u] / static_cast<size_t>(s.p), base = member * len;
    const size_t end = std::min(base + len, s.numel[u]);
    if (base >= end) continue;
    const auto [lo, hi] = checkpoint_piece(base, end, replica, static_cast<size_t>(s.r));
    if (lo >= hi) continue;
    const size_t at = s.offset[u] + (lo - base);  // in device memory
    out.push_back({static_cast<int>(u), lo, hi - lo, s.master + at, s.m + at, s.v + at});
  }
  return out;
}

void CudaEngine::copy_state(const StateRange& r, int which, size_t offset, size_t count, float* dst) const {
  MICS_ENGINE_CUDA(cudaStreamSynchronize(impl_->cs));  // the step's AdamW has written them
  const float* src = which == 0 ? r.param : which == 1 ? r.exp_avg : r.exp_avg_sq;
  MICS_ENGINE_CUDA(cudaMemcpy(dst, src + (offset - r.offset), count * sizeof(float), cudaMemcpyDeviceToHost));
}

void CudaEngine::load_state(const StateReader& read) {
  Impl& s = *impl_;
  MICS_ENGINE_CUDA(cudaStreamSynchronize(s.cs));
  std::vector<float> host(3 * s.shard, 0.0f);  // master | m | v of the shard
  const size_t member = static_cast<size_t>(s.groups.partition->rank());
  for (size_t u = 0; u < s.numel.size(); ++u) {
    const size_t len = s.padded[u] / static_cast<size_t>(s.p), base = member * len;
    const size_t end = std::min(base + len, s.numel[u]);
    if (base >= end) continue;  // all padding: stays zero
    for (size_t which = 0; which < 3; ++which)
      read(static_cast<int>(u), static_cast<int>(which), base, end - base, host.data() + which * s.shard + s.offset[u]);
  }
  float* arrays[3] = {s.master, s.m, s.v};
  for (size_t k = 0; k < 3; ++k)
    MICS_ENGINE_CUDA(cudaMemcpy(arrays[k], host.data() + k * s.shard, s.shard * sizeof(float), cudaMemcpyHostToDevice));
  MICS_ENGINE_CUDA(cudaMemset(s.acc, 0, s.shard * sizeof(float)));
  std::fill(s.reduced.begin(), s.reduced.end(), 0);
}

OptimizerCounters CudaEngine::optimizer_counters() const {
  return {impl_->steps, impl_->consecutive_skips};
}
void CudaEngine::set_optimizer_counters(const OptimizerCounters& counters) {
  impl_->steps = counters.steps;
  impl_->consecutive_skips = counters.consecutive_skips;
}

int64_t CudaEngine::optimizer_steps() const { return impl_->steps; }
int CudaEngine::partition_size() const { return impl_->p; }
int CudaEngine::replicas() const { return impl_->r; }
comm::GpuBackend CudaEngine::backend() const { return impl_->options.backend; }
uint64_t CudaEngine::model_state_bytes() const { return 16ull * impl_->shard; }

void CudaEngine::control_all_reduce(float* values, size_t count, ReduceOp op) {
  if (impl_->N > 1 && count) impl_->world->all_reduce(values, values, count, DType::kF32, op);
}

comm::Traffic CudaEngine::traffic() const { return minus(impl_->raw_traffic(), impl_->base); }

comm::Traffic CudaEngine::expected_traffic(int optimizer_steps, int forward_passes) const {
  const Impl& s = *impl_;
  const uint64_t S = static_cast<uint64_t>(s.options.grad_accum);
  const uint64_t steps = static_cast<uint64_t>(optimizer_steps), passes = static_cast<uint64_t>(forward_passes);
  const size_t units = s.numel.size();
  comm::Traffic total;
  total.bytes_sent = {};
  total.msgs_sent = {};
  if (s.options.backend == comm::GpuBackend::kFabric) {
    if (s.p > 1) {
      for (size_t u = 0; u < units; ++u) {
        // training: two gathers and one reduce-scatter per micro-step; eval: one gather (unit 0: two)
        const uint64_t gathers = steps * S * 2 + passes * (u == 0 ? 2 : 1);
        add_to(total, comm::predict_traffic(*s.groups.partition, "all_gather", s.padded[u], s.options.gather_dtype), gathers);
        add_to(total, comm::predict_traffic(*s.groups.partition, "reduce_scatter", s.padded[u], DType::kF32), steps * S);
      }
      add_to(total, comm::predict_traffic(*s.groups.partition, "all_reduce", 1, DType::kF32), steps);
    }
    if (s.r > 1)
      for (size_t u = 0; u < units; ++u)
        add_to(total, comm::predict_traffic(*s.groups.replication, "all_reduce", s.padded[u] / static_cast<size_t>(s.p), DType::kF32),
               steps);
  } else {
    // The ring formulas NcclGpuComm counts (bytes only), on the rail its group sits on.
    auto ring = [&](const comm::Communicator& c, uint64_t bytes) {
      const int rail = c.num_nodes() > 1 ? static_cast<int>(fabric::Rail::kInter) : static_cast<int>(fabric::Rail::kIntra);
      total.bytes_sent[rail] += bytes;
    };
    const uint64_t n = static_cast<uint64_t>(s.p), rr = static_cast<uint64_t>(s.r);
    if (s.p > 1) {
      for (size_t u = 0; u < units; ++u) {
        const uint64_t P = s.padded[u] * 4, G = s.padded[u] * dtype_size(s.options.gather_dtype);
        ring(*s.groups.partition, (steps * S * 2 + passes * (u == 0 ? 2 : 1)) * (G - G / n));
        ring(*s.groups.partition, steps * S * (P - P / n));
      }
      ring(*s.groups.partition, steps * 2 * (1 - 1 / n) * 4);  // NcclGpuComm counts whole elements
    }
    if (s.r > 1) ring(*s.groups.replication, steps * 2 * (s.shard * 4 - s.shard * 4 / rr));
  }
  return total;
}

#else  // no CUDA

struct CudaEngine::Impl {};
CudaEngine::CudaEngine(comm::Runtime&, const CudaEngineOptions&, std::vector<size_t>, DeviceOptimizer) {
  throw Error(ErrorKind::kUnavailable, "the GPU sharded engine: this build has no CUDA support",
              {.layer = "shard", .hint = "build with CUDA (cmake -DMICS_WITH_CUDA=ON), or use --device cpu"});
}
CudaEngine::~CudaEngine() = default;
int CudaEngine::world_size() const { return 1; }
size_t CudaEngine::unit_padded(int) const { return 0; }
size_t CudaEngine::shard_size() const { return 0; }
void CudaEngine::finalize(const std::function<void(int, float*)>&) {}
UnitSource CudaEngine::unit_source() { return {}; }
CudaStepReport CudaEngine::step(float, comm::GpuStream) { return {}; }
int64_t CudaEngine::optimizer_steps() const { return 0; }
int CudaEngine::partition_size() const { return 1; }
int CudaEngine::replicas() const { return 1; }
comm::GpuBackend CudaEngine::backend() const { return comm::GpuBackend::kFabric; }
uint64_t CudaEngine::model_state_bytes() const { return 0; }
void CudaEngine::control_all_reduce(float*, size_t, ReduceOp) {}
std::vector<StateRange> CudaEngine::checkpoint_ranges() const {
  return {};
}
void CudaEngine::copy_state(const StateRange&, int, size_t, size_t, float*) const {}
void CudaEngine::load_state(const StateReader&) {}
OptimizerCounters CudaEngine::optimizer_counters() const {
  return {};
}
void CudaEngine::set_optimizer_counters(const OptimizerCounters&) {}
comm::Traffic CudaEngine::traffic() const { return {}; }
comm::Traffic CudaEngine::expected_traffic(int, int) const { return {}; }

#endif

}  // namespace mics::shard
