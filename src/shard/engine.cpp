#include "shard/engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <future>
#include <tuple>
#include <mutex>

#include <fmt/format.h>

#include "base/clock.hpp"
#include "base/log.hpp"
#include "comm/layout.hpp"
#include "comm/traffic_model.hpp"
#include "obs/observer.hpp"
#include "shard/comm_thread.hpp"
#include "topo/partition_auto.hpp"

namespace mics::shard {

namespace {

enum class GatherState { kNone, kInFlight, kReady };

struct Unit {
  std::string name;
  size_t numel = 0;
  size_t padded = 0;       // numel rounded up to a multiple of the world size
  bool replicated = false; // kept whole on every rank (small units, or p = 1)
  size_t shard = 0;        // elements of this rank's shard (padded / p), or numel if replicated
  size_t offset = 0;       // into the flat shard arrays (or the replicated arrays)
  std::vector<float> gathered;
  float norm_weight = 1.0f;
  comm::Communicator* tied = nullptr;  // gradient shard summed over it at the boundary
  GatherState state = GatherState::kNone;
  std::future<void> pending;
};

// Buffers reused across calls: on this class of machine first-touching fresh pages costs
// more than the copies themselves.
class BufferPool {
 public:
  std::vector<std::byte> take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i].size() >= bytes) {
        std::vector<std::byte> b = std::move(free_[i]);
        free_.erase(free_.begin() + static_cast<long>(i));
        return b;
      }
    return std::vector<std::byte>(bytes);
  }
  void give(std::vector<std::byte> b) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(b));
  }

 private:
  std::mutex mutex_;
  std::vector<std::vector<std::byte>> free_;
};

comm::Traffic operator-(const comm::Traffic& a, const comm::Traffic& b) {
  comm::Traffic t;
  for (int i = 0; i < fabric::kNumRails; ++i) {
    t.bytes_sent[i] = a.bytes_sent[i] - b.bytes_sent[i];
    t.msgs_sent[i] = a.msgs_sent[i] - b.msgs_sent[i];
  }
  return t;
}

void add_to(comm::Traffic& total, const comm::Traffic& t, uint64_t times = 1) {
  for (int i = 0; i < fabric::kNumRails; ++i) {
    total.bytes_sent[i] += t.bytes_sent[i] * times;
    total.msgs_sent[i] += t.msgs_sent[i] * times;
  }
}

}  // namespace

struct Engine::Impl {
  comm::Runtime& runtime;
  comm::Communicator* job = nullptr;  // the engine's world: the runtime's, or a mesh slice's
  EngineOptions options;
  topo::Groups groups;
  std::unique_ptr<comm::Communicator> world;  // the engine's own copy (its own counters)
  int world_size = 1, p = 1, r = 1;
  std::vector<Unit> units;
  bool finalized = false;
  // Sharded units, their shards concatenated; replicated units, whole.
  std::vector<float> master, grad, m, v;
  std::vector<float> rmaster, rgrad, rm, rv;
  std::vector<std::future<void>> pending_reductions;
  BufferPool pool;
  int micro = 0;
  int64_t optimizer_steps = 0;
  int consecutive_skips = 0;
  double exposed_s = 0;
  Clock::time_point report_start = Clock::now();
  uint64_t gathered_bytes = 0, gathered_peak = 0;
  // Released units' gather buffers, reused by the next gathers: the resident working set
  // stays at the largest number of units gathered at once, not the whole model.
  std::vector<std::vector<float>> spare_gathered;
  comm::Traffic base;
  std::unique_ptr<CommThread> thread;  // last: stops before the rest goes away

  Impl(comm::Runtime& rt, comm::Communicator& w, const EngineOptions& o) : runtime(rt), job(&w), options(o) {}
  void construct();
  std::vector<comm::Communicator*> tied_groups() const {
    std::vector<comm::Communicator*> out;
    for (const auto& un : units)
      if (un.tied && std::find(out.begin(), out.end(), un.tied) == out.end()) out.push_back(un.tied);
    return out;
  }
  int ranks_per_node() const;
  void setup(int partition);  // collective: groups, the engine's world, the comm thread

  comm::Traffic engine_traffic() const {
    comm::Traffic t;
    add_to(t, groups.partition->traffic());
    add_to(t, groups.replication->traffic());
    add_to(t, world->traffic());
    if (options.norm_group) add_to(t, options.norm_group->traffic());
    for (comm::Communicator* g : tied_groups()) add_to(t, g->traffic());
    return t;
  }

  void wait(std::future<void>& f, const char* what = "wait for comm") {
    if (!f.valid()) return;
    const auto t0 = Clock::now();
    f.wait();
    exposed_s += seconds_since(t0);
    if (obs::Observer* o = runtime.world().observer(); o && o->tracing()) {
      const int64_t start = std::chrono::duration_cast<std::chrono::nanoseconds>(t0.time_since_epoch()).count();
      o->span("comm_wait", what, obs::kMainTid, start, obs::steady_ns() - start);
    }
    f.get();  // rethrows a communication error
  }

  Unit& unit(int u, const char* what) {
    if (!finalized)
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{} before finalize()", what),
                  {.layer = "shard", .hint = "declare every unit, then call finalize()"});
    if (u < 0 || u >= static_cast<int>(units.size()))
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{} of unit {} (the model has {})", what, u, units.size()),
                  {.layer = "shard"});
    return units[static_cast<size_t>(u)];
  }

  void start_gather(Unit& un) {
    take_gather_buffer(un);
    gathered_bytes += un.padded * sizeof(float);
    gathered_peak = std::max(gathered_peak, gathered_bytes);
    un.state = GatherState::kInFlight;
    const float* shard = master.data() + un.offset;
    float* out = un.gathered.data();
    const size_t count = un.padded;
    comm::Communicator* partition = groups.partition.get();
    un.pending = thread->submit([=] { partition->all_gather(shard, out, count, DType::kF32); });
  }

  void take_gather_buffer(Unit& un) {
    // The smallest spare that fits, else a new one.
    size_t best = spare_gathered.size();
    for (size_t i = 0; i < spare_gathered.size(); ++i)
      if (spare_gathered[i].capacity() >= un.padded &&
          (best == spare_gathered.size() || spare_gathered[i].capacity() < spare_gathered[best].capacity()))
        best = i;
    if (best < spare_gathered.size()) {
      un.gathered = std::move(spare_gathered[best]);
      spare_gathered.erase(spare_gathered.begin() + static_cast<long>(best));
    }
    un.gathered.resize(un.padded);
  }

  void drop(Unit& un) {
    if (un.state == GatherState::kInFlight) wait(un.pending);
    if (un.state != GatherState::kNone) {
      gathered_bytes -= un.padded * sizeof(float);
      spare_gathered.push_back(std::move(un.gathered));
      un.gathered = {};
    }
    un.state = GatherState::kNone;
  }
};

Engine::Engine(comm::Runtime& runtime, const EngineOptions& options)
    : impl_(std::make_unique<Impl>(runtime, runtime.world(), options)) {
  impl_->construct();
}

Engine::Engine(comm::Runtime& runtime, comm::Communicator& world, const EngineOptions& options)
    : impl_(std::make_unique<Impl>(runtime, world, options)) {
  impl_->construct();
}

void Engine::Impl::construct() {
  Impl& s = *this;
  if (options.grad_accum < 1)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("grad_accum {} < 1", options.grad_accum),
                {.layer = "shard", .hint = "use 1 or more micro-steps per optimizer step"});
  s.world_size = job->size();
  const bool automatic = options.strategy == topo::Strategy::kMics &&
                         options.partition_size == EngineOptions::kAutoPartition;
  if (automatic && options.memory_budget_bytes == 0)
    throw Error(ErrorKind::kInvalidArgument, "automatic partition size without a memory budget",
                {.layer = "shard", .hint = "set memory_budget_bytes (per rank)"});
  // With an automatic partition size the groups wait for finalize(), which knows the units.
  if (!automatic)
    s.setup(topo::resolve_partition_size(options.strategy, options.partition_size, s.world_size,
                                         s.ranks_per_node()));
}

int Engine::Impl::ranks_per_node() const {
  if (job != &runtime.world()) return job->members_per_node() ? job->members_per_node() : world_size;
  const int n = runtime.topology().uniform_ranks_per_node();
  return n ? n : world_size;
}

void Engine::Impl::setup(int partition) {
  Impl& s = *this;
  comm::Communicator& parent = *s.job;
  s.p = partition;
  s.r = s.world_size / s.p;
  s.groups = topo::build_groups(parent, s.p);
  s.world = parent.split(0, parent.rank(), "engine-world");
  // Build the hierarchical sub-communicators now, so that their set-up is not step traffic.
  if (s.groups.partition->num_nodes() > 1 && s.groups.partition->members_per_node() > 1)
    s.groups.partition->cross_node();
  s.base = s.engine_traffic();
  s.thread = std::make_unique<CommThread>();
  if (runtime.rank() == 0)
    log::info("engine: {} with p={} r={} over {}", topo::to_string(options.strategy), s.p, s.r,
              runtime.topology().describe());
}

Engine::~Engine() {
  // Let queued collectives finish (or fail) before buffers go away.
  impl_->thread.reset();
}

int Engine::add_unit(const std::string& name, size_t numel) {
  Impl& s = *impl_;
  if (s.finalized)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("add_unit('{}') after finalize()", name),
                {.layer = "shard"});
  Unit un;
  un.name = name;
  un.numel = numel;
  const size_t n = static_cast<size_t>(s.world_size);
  un.padded = (numel + n - 1) / n * n;
  s.units.push_back(std::move(un));
  return static_cast<int>(s.units.size()) - 1;
}

void Engine::finalize(const std::function<void(int unit, float* params)>& init) {
  Impl& s = *impl_;
  if (!s.groups.partition) {
    topo::MemoryEstimate estimate;
    for (const auto& un : s.units) {
      estimate.parameters += un.padded;
      estimate.unit_sizes.push_back(un.padded);
    }
    estimate.activation_bytes = s.options.activation_bytes;
    estimate.keep_gathered = s.options.keep_gathered;
    const topo::PartitionChoice choice = topo::choose_partition_size(
        estimate, s.options.memory_budget_bytes, s.world_size, s.ranks_per_node());
    if (s.runtime.rank() == 0)
      log::info("partition size auto: p={}\n{}", choice.partition_size, choice.explanation);
    s.setup(choice.partition_size);
  }
  size_t sharded = 0, replicated = 0;
  for (auto& un : s.units) {
    un.replicated = s.p == 1 || un.numel < s.options.replicate_below;
    if (un.replicated) {
      un.shard = un.numel;
      un.offset = replicated;
      replicated += un.numel;
    } else {
      un.shard = un.padded / static_cast<size_t>(s.p);
      un.offset = sharded;
      sharded += un.shard;
    }
  }
  s.master.assign(sharded, 0.0f);
  s.grad.assign(sharded, 0.0f);
  s.m.assign(sharded, 0.0f);
  s.v.assign(sharded, 0.0f);
  s.rmaster.assign(replicated, 0.0f);
  s.rgrad.assign(replicated, 0.0f);
  s.rm.assign(replicated, 0.0f);
  s.rv.assign(replicated, 0.0f);
  const int member = s.groups.partition->rank();
  std::vector<float> full;
  for (size_t u = 0; u < s.units.size(); ++u) {
    Unit& un = s.units[u];
    full.assign(un.padded, 0.0f);
    init(static_cast<int>(u), full.data());
    if (un.replicated) {
      std::memcpy(s.rmaster.data() + un.offset, full.data(), un.numel * sizeof(float));
    } else {
      std::memcpy(s.master.data() + un.offset, full.data() + static_cast<size_t>(member) * un.shard,
                  un.shard * sizeof(float));
    }
  }
  s.finalized = true;
}

void Engine::prefetch(int unit) {
  Impl& s = *impl_;
  Unit& un = s.unit(unit, "prefetch");
  if (un.replicated || un.state != GatherState::kNone) return;
  s.start_gather(un);
}

const float* Engine::gather(int unit) {
  Impl& s = *impl_;
  Unit& un = s.unit(unit, "gather");
  if (un.replicated) return s.rmaster.data() + un.offset;
  if (un.state == GatherState::kNone) s.start_gather(un);
  if (un.state == GatherState::kInFlight) {
    s.wait(un.pending, "wait for gather");
    un.state = GatherState::kReady;
  }
  return un.gathered.data();
}

void Engine::release(int unit) {
  Impl& s = *impl_;
  Unit& un = s.unit(unit, "release");
  if (un.replicated || s.options.keep_gathered) return;
  s.drop(un);
}

void Engine::reduce_gradients(int unit, const float* grads) {
  Impl& s = *impl_;
  Unit& un = s.unit(unit, "reduce_gradients");
  if (un.replicated) {
    float* acc = s.rgrad.data() + un.offset;
    for (size_t i = 0; i < un.numel; ++i) acc[i] += grads[i];
    return;
  }
  // Copy (and convert) now: the caller may reuse its gradient buffer as soon as we return.
  const DType dtype = s.options.comm_dtype;
  const size_t es = dtype_size(dtype);
  auto send = std::make_shared<std::vector<std::byte>>(s.pool.take(un.padded * es));
  auto shard = std::make_shared<std::vector<std::byte>>(s.pool.take(un.shard * es));
  if (dtype == DType::kF32) {
    std::memcpy(send->data(), grads, un.numel * sizeof(float));
    std::memset(send->data() + un.numel * es, 0, (un.padded - un.numel) * es);
  } else {
    auto* out = reinterpret_cast<uint16_t*>(send->data());
    for (size_t i = 0; i < un.padded; ++i) {
      const float g = i < un.numel ? grads[i] : 0.0f;
      out[i] = dtype == DType::kBF16 ? f32_to_bf16(g) : f32_to_f16(g);
    }
  }
  float* acc = s.grad.data() + un.offset;
  const size_t count = un.padded, shard_count = un.shard;
  comm::Communicator* partition = s.groups.partition.get();
  Impl* state = &s;
  s.pending_reductions.push_back(s.thread->submit([=] {
    partition->reduce_scatter(send->data(), shard->data(), count, dtype, ReduceOp::kSum);
    if (dtype == DType::kF32) {
      reduce_into(acc, shard->data(), shard_count, DType::kF32, ReduceOp::kSum);
    } else {
      const auto* in = reinterpret_cast<const uint16_t*>(shard->data());
      for (size_t i = 0; i < shard_count; ++i)
        acc[i] += dtype == DType::kBF16 ? bf16_to_f32(in[i]) : f16_to_f32(in[i]);
    }
    state->pool.give(std::move(*send));
    state->pool.give(std::move(*shard));
  }));
}

namespace {

void adamw(float* param, float* grad, float* m, float* v, size_t n, const EngineOptions& o,
           int64_t t, float grad_scale) {
  const float b1 = o.beta1, b2 = o.beta2;
  const float bc1 = 1.0f - std::pow(b1, static_cast<float>(t));
  const float bc2 = 1.0f - std::pow(b2, static_cast<float>(t));
  for (size_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    param[i] -= o.lr * o.weight_decay * param[i];
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    const float mhat = m[i] / bc1, vhat = v[i] / bc2;
    param[i] -= o.lr * mhat / (std::sqrt(vhat) + o.eps);
  }
}

}  // namespace

StepReport Engine::step() {
  Impl& s = *impl_;
  StepReport report;
  ++s.micro;
  if (s.options.keep_gathered)
    for (auto& un : s.units)
      if (!un.replicated) s.drop(un);
  if (s.micro % s.options.grad_accum == 0) {
    report.boundary = true;
    for (auto& f : s.pending_reductions) s.wait(f, "wait for reduce-scatter");
    s.pending_reductions.clear();
    // 2-hop: the shard sums of the replicas, and the replicated units' sums over the world.
    comm::Communicator* replication = s.groups.replication.get();
    comm::Communicator* world = s.world.get();
    std::future<void> sync = s.thread->submit([&s, replication, world] {
      // Tied units (the token embedding on the first and last pipeline stage): sum the copies.
      for (auto& un : s.units)
        if (un.tied && !un.replicated)
          un.tied->all_reduce(s.grad.data() + un.offset, s.grad.data() + un.offset, un.shard, DType::kF32,
                              ReduceOp::kSum);
        else if (un.tied)
          un.tied->all_reduce(s.rgrad.data() + un.offset, s.rgrad.data() + un.offset, un.numel, DType::kF32,
                              ReduceOp::kSum);
      if (s.r > 1 && !s.grad.empty())
        replication->all_reduce(s.grad.data(), s.grad.data(), s.grad.size(), DType::kF32, ReduceOp::kSum);
      if (s.world_size > 1 && !s.rgrad.empty())
        world->all_reduce(s.rgrad.data(), s.rgrad.data(), s.rgrad.size(), DType::kF32, ReduceOp::kSum);
    });
    s.wait(sync, "wait for 2-hop all-reduce");
    // Average over every rank's micro-batches, then the global norm: shards are disjoint
    // inside a partition group (sum them there), replicated units count once.
    const float scale = 1.0f / static_cast<float>(s.world_size * s.options.grad_accum);
    double local = 0, replicated_sq = 0;
    for (const auto& un : s.units) {
      const float* g = (un.replicated ? s.rgrad.data() : s.grad.data()) + un.offset;
      double sq = 0;
      for (size_t i = 0; i < un.shard; ++i) sq += static_cast<double>(g[i]) * g[i];
      (un.replicated ? replicated_sq : local) += sq * un.norm_weight;
    }
    float partition_sum = static_cast<float>(local * scale * scale);
    if (s.p > 1) {
      comm::Communicator* partition = s.groups.partition.get();
      std::future<void> norm = s.thread->submit([partition, &partition_sum] {
        partition->all_reduce(&partition_sum, &partition_sum, 1, DType::kF32, ReduceOp::kSum);
      });
      s.wait(norm);
    }
    double total_sq = static_cast<double>(partition_sum) + replicated_sq * scale * scale;
    if (comm::Communicator* group = s.options.norm_group; group && group->size() > 1) {
      float slice_sum = static_cast<float>(total_sq);
      std::future<void> norm = s.thread->submit([group, &slice_sum] {
        group->all_reduce(&slice_sum, &slice_sum, 1, DType::kF32, ReduceOp::kSum);
      });
      s.wait(norm);
      total_sq = slice_sum;
    }
    const double norm = std::sqrt(total_sq);
    report.grad_norm = norm;
    if (!std::isfinite(norm)) {
      report.skipped = true;
      ++s.consecutive_skips;
      if (s.runtime.rank() == 0)
        log::warn("step {} skipped: the global gradient norm is {} (non-finite)", s.optimizer_steps + 1, norm);
      if (s.consecutive_skips > s.options.max_skipped_steps) {
        throw Error(ErrorKind::kInvalidArgument,
                    fmt::format("{} optimizer steps in a row had non-finite gradients", s.consecutive_skips),
                    {.layer = "shard", .where = "the optimizer step",
                     .hint = "lower the learning rate, check the data and the loss for inf/NaN, or "
                             "raise max_skipped_steps"});
      }
    } else {
      s.consecutive_skips = 0;
      float clip_scale = 1.0f;
      if (s.options.clip_norm > 0 && norm > s.options.clip_norm)
        clip_scale = static_cast<float>(s.options.clip_norm / norm);
      ++s.optimizer_steps;
      adamw(s.master.data(), s.grad.data(), s.m.data(), s.v.data(), s.master.size(), s.options,
            s.optimizer_steps, scale * clip_scale);
      adamw(s.rmaster.data(), s.rgrad.data(), s.rm.data(), s.rv.data(), s.rmaster.size(), s.options,
            s.optimizer_steps, scale * clip_scale);
    }
    std::fill(s.grad.begin(), s.grad.end(), 0.0f);
    std::fill(s.rgrad.begin(), s.rgrad.end(), 0.0f);
    // Parameters changed: gathered copies (prefetched or kept) are stale.
    for (auto& un : s.units)
      if (!un.replicated) s.drop(un);
  }
  report.exposed_comm_s = s.exposed_s;
  report.step_s = seconds_since(s.report_start);
  s.exposed_s = 0;
  s.report_start = Clock::now();
  return report;
}

void Engine::set_norm_weight(int unit, float weight) {
  impl_->units.at(static_cast<size_t>(unit)).norm_weight = weight;
}

void Engine::tie_gradients(int unit, comm::Communicator* group) {
  Impl& s = *impl_;
  const auto known = s.tied_groups();
  if (group && std::find(known.begin(), known.end(), group) == known.end())
    add_to(s.base, group->traffic());  // its traffic before the tie is not the engine's
  s.units.at(static_cast<size_t>(unit)).tied = group && group->size() > 1 ? group : nullptr;
}

void Engine::run_on_comm_thread(const std::function<void()>& task, const char* what) {
  Impl& s = *impl_;
  std::future<void> f = s.thread->submit(task);
  s.wait(f, what);
}

void Engine::set_lr(float lr) { impl_->options.lr = lr; }
float Engine::lr() const { return impl_->options.lr; }
int64_t Engine::optimizer_steps() const { return impl_->optimizer_steps; }

void Engine::control_all_reduce(float* values, size_t count, ReduceOp op) {
  Impl& s = *impl_;
  if (s.world_size == 1 || count == 0) return;
  comm::Communicator* world = s.world.get();
  const comm::Traffic before = s.engine_traffic();
  std::future<void> f = s.thread->submit([=] { world->all_reduce(values, values, count, DType::kF32, op); });
  f.get();
  add_to(s.base, s.engine_traffic() - before);  // control, not training: left out of traffic()
}

std::vector<float> Engine::full_parameters(int unit) {
  Impl& s = *impl_;
  Unit& un = s.unit(unit, "full_parameters");
  if (un.replicated)
    return std::vector<float>(s.rmaster.begin() + static_cast<long>(un.offset),
                              s.rmaster.begin() + static_cast<long>(un.offset + un.numel));
  std::vector<float> full(un.padded);
  comm::Communicator* partition = s.groups.partition.get();
  const float* shard = s.master.data() + un.offset;
  const size_t count = un.padded;
  // An inspection, not training: its traffic is left out of traffic().
  const comm::Traffic before = s.engine_traffic();
  std::future<void> f = s.thread->submit([&] { partition->all_gather(shard, full.data(), count, DType::kF32); });
  f.get();
  add_to(s.base, s.engine_traffic() - before);
  full.resize(un.numel);
  return full;
}

std::vector<StateRange> Engine::checkpoint_ranges() const {
  const Impl& s = *impl_;
  MICS_CHECK(s.finalized, "checkpoint_ranges() before finalize()");
  std::vector<StateRange> out;
  const size_t member = static_cast<size_t>(s.groups.partition->rank());
  const size_t replica = static_cast<size_t>(s.groups.replication->rank());
  const size_t rank = static_cast<size_t>(s.job->rank());
  for (size_t u = 0; u < s.units.size(); ++u) {
    const Unit& un = s.units[u];
    size_t lo, hi, base;
    const float *param, *m1, *m2;
    if (un.replicated) {
      std::tie(lo, hi) = checkpoint_piece(0, un.numel, rank, static_cast<size_t>(s.world_size));
      base = 0;
      param = s.rmaster.data() + un.offset;
      m1 = s.rm.data() + un.offset;
      m2 = s.rv.data() + un.offset;
    } else {
      base = member * un.shard;
      const size_t end = std::min(base + un.shard, un.numel);
      if (base >= end) continue;
      std::tie(lo, hi) = checkpoint_piece(base, end, replica, static_cast<size_t>(s.r));
      param = s.master.data() + un.offset;
      m1 = s.m.data() + un.offset;
      m2 = s.v.data() + un.offset;
    }
    if (lo >= hi) continue;
    out.push_back({static_cast<int>(u), lo, hi - lo, param + (lo - base), m1 + (lo - base), m2 + (lo - base)});
  }
  return out;
}

void Engine::load_state(const StateReader& read) {
  Impl& s = *impl_;
  MICS_CHECK(s.finalized, "load_state() before finalize()");
  const size_t member = static_cast<size_t>(s.groups.partition->rank());
  for (auto& f : s.pending_reductions) s.wait(f);
  s.pending_reductions.clear();
  for (size_t u = 0; u < s.units.size(); ++u) {
    Unit& un = s.units[u];
    s.drop(un);
    if (un.replicated) {
      read(static_cast<int>(u), 0, 0, un.numel, s.rmaster.data() + un.offset);
      read(static_cast<int>(u), 1, 0, un.numel, s.rm.data() + un.offset);
      read(static_cast<int>(u), 2, 0, un.numel, s.rv.data() + un.offset);
      continue;
    }
    const size_t base = member * un.shard;
    const size_t end = std::min(base + un.shard, un.numel);
    float* arrays[3] = {s.master.data() + un.offset, s.m.data() + un.offset, s.v.data() + un.offset};
    for (int which = 0; which < 3; ++which) {
      std::fill(arrays[which], arrays[which] + un.shard, 0.0f);
      if (base < end) read(static_cast<int>(u), which, base, end - base, arrays[which]);
    }
  }
  std::fill(s.grad.begin(), s.grad.end(), 0.0f);
  std::fill(s.rgrad.begin(), s.rgrad.end(), 0.0f);
  s.micro = 0;
}

OptimizerCounters Engine::optimizer_counters() const { return {impl_->optimizer_steps, impl_->consecutive_skips}; }
void Engine::set_optimizer_counters(const OptimizerCounters& c) {
  impl_->optimizer_steps = c.steps;
  impl_->consecutive_skips = c.consecutive_skips;
}

int Engine::num_units() const { return static_cast<int>(impl_->units.size()); }
size_t Engine::unit_size(int unit) const { return impl_->units.at(static_cast<size_t>(unit)).numel; }
int Engine::partition_size() const { return impl_->p; }
int Engine::replicas() const { return impl_->r; }
const topo::Groups& Engine::groups() const { return impl_->groups; }

MemoryReport Engine::memory() const {
  const Impl& s = *impl_;
  MemoryReport m;
  m.model_state_bytes = 4 * sizeof(float) * (s.master.size() + s.rmaster.size());
  m.gathered_peak_bytes = s.gathered_peak;
  for (const auto& un : s.units) m.full_model_params += un.numel;
  return m;
}

comm::Traffic Engine::traffic() const { return impl_->engine_traffic() - impl_->base; }

comm::Traffic Engine::expected_traffic(int optimizer_steps) const {
  const Impl& s = *impl_;
  comm::Traffic per_step;
  const uint64_t S = static_cast<uint64_t>(s.options.grad_accum);
  const uint64_t gathers = s.options.keep_gathered ? 1 : 2;
  size_t replicated = 0;
  for (const auto& un : s.units) {
    if (un.replicated) {
      replicated += un.numel;
      continue;
    }
    add_to(per_step, comm::predict_traffic(*s.groups.partition, "all_gather", un.padded, DType::kF32), S * gathers);
    add_to(per_step, comm::predict_traffic(*s.groups.partition, "reduce_scatter", un.padded, s.options.comm_dtype), S);
  }
  if (s.r > 1 && !s.grad.empty())
    add_to(per_step, comm::predict_traffic(*s.groups.replication, "all_reduce", s.grad.size(), DType::kF32));
  if (s.world_size > 1 && replicated)
    add_to(per_step, comm::predict_traffic(*s.world, "all_reduce", replicated, DType::kF32));
  if (s.p > 1) add_to(per_step, comm::predict_traffic(*s.groups.partition, "all_reduce", 1, DType::kF32));
  for (const auto& un : s.units)
    if (un.tied) add_to(per_step, comm::predict_traffic(*un.tied, "all_reduce", un.shard, DType::kF32));
  if (s.options.norm_group && s.options.norm_group->size() > 1)
    add_to(per_step, comm::predict_traffic(*s.options.norm_group, "all_reduce", 1, DType::kF32));
  comm::Traffic total;
  add_to(total, per_step, static_cast<uint64_t>(optimizer_steps));
  return total;
}

}  // namespace mics::shard
