#include "comm/gpu_comm.hpp"

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/clock.hpp"
#include "base/knobs.hpp"
#include "base/log.hpp"
#include "comm/layout.hpp"

#ifdef MICS_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#ifdef MICS_HAVE_NCCL
#include <nccl.h>
#endif

namespace mics::comm {

const char* to_string(GpuBackend backend) { return backend == GpuBackend::kNccl ? "nccl" : "fabric"; }

#ifndef MICS_HAVE_CUDA

int select_gpu_device(const Runtime&) {
  throw Error(ErrorKind::kUnavailable, "GPU collectives: this build has no CUDA support",
              {.layer = "comm", .hint = "build with CUDA (cmake -DMICS_WITH_CUDA=ON), or use --device cpu"});
}
GpuBackendChoice choose_gpu_backend(Runtime& runtime, int) {
  (void)select_gpu_device(runtime);
  return {};
}
std::unique_ptr<GpuComm> make_gpu_comm(GpuBackend, Communicator&, bootstrap::StoreClient&) {
  throw Error(ErrorKind::kUnavailable, "GPU collectives: this build has no CUDA support",
              {.layer = "comm", .hint = "build with CUDA (cmake -DMICS_WITH_CUDA=ON), or use --device cpu"});
}

#else

namespace {

void check_cuda(cudaError_t err, const char* call, const std::string& where) {
  if (err != cudaSuccess)
    throw Error(ErrorKind::kUnavailable, fmt::format("{} failed: {}: {}", call, cudaGetErrorName(err), cudaGetErrorString(err)),
                {.layer = "comm", .where = where, .hint = "check the GPU with mics doctor and nvidia-smi"});
}
#define MICS_COMM_CUDA(call, where) check_cuda((call), #call, (where))

std::string hex(const void* data, size_t n) {
  std::string s;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", p[i]);
  return s;
}

cudaStream_t st(GpuStream s) { return static_cast<cudaStream_t>(s); }

// A grow-only pinned host buffer.
class Pinned {
 public:
  ~Pinned() {
    if (data_) cudaFreeHost(data_);
  }
  std::byte* get(size_t bytes, const std::string& where) {
    if (bytes > size_) {
      if (data_) cudaFreeHost(data_);
      data_ = nullptr;
      size_ = 0;
      void* p = nullptr;
      MICS_COMM_CUDA(cudaMallocHost(&p, std::max<size_t>(bytes, 4096)), where);
      data_ = static_cast<std::byte*>(p);
      size_ = std::max<size_t>(bytes, 4096);
    }
    return data_;
  }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// --- fabric: staged through pinned host memory -------------------------------------------
class FabricGpuComm final : public GpuComm {
 public:
  explicit FabricGpuComm(Communicator& host) : GpuComm(host) {}

  void all_gather(const void* shard, void* output, size_t count, DType dtype, GpuStream s) override {
    const std::string where = fmt::format("all_gather (fabric staging) on '{}'", name());
    const size_t es = dtype_size(dtype);
    const Block b = block_of(count, size(), rank());
    std::byte* h = out_.get(count * es, where);
    std::byte* mine = h + b.offset * es;
    if (b.count) MICS_COMM_CUDA(cudaMemcpyAsync(mine, shard, b.count * es, cudaMemcpyDeviceToHost, st(s)), where);
    synchronize(s, "all_gather staging");
    host_.all_gather(mine, h, count, dtype);  // in place: our block already sits at its offset
    if (count) MICS_COMM_CUDA(cudaMemcpyAsync(output, h, count * es, cudaMemcpyHostToDevice, st(s)), where);
    synchronize(s, "all_gather staging");
  }

  void reduce_scatter(const void* input, void* shard, size_t count, DType dtype, ReduceOp op, GpuStream s) override {
    const std::string where = fmt::format("reduce_scatter (fabric staging) on '{}'", name());
    const size_t es = dtype_size(dtype);
    const Block b = block_of(count, size(), rank());
    std::byte* in = in_.get(count * es, where);
    std::byte* out = out_.get(b.count * es, where);
    if (count) MICS_COMM_CUDA(cudaMemcpyAsync(in, input, count * es, cudaMemcpyDeviceToHost, st(s)), where);
    synchronize(s, "reduce_scatter staging");
    host_.reduce_scatter(in, out, count, dtype, op);
    if (b.count) MICS_COMM_CUDA(cudaMemcpyAsync(shard, out, b.count * es, cudaMemcpyHostToDevice, st(s)), where);
    synchronize(s, "reduce_scatter staging");
  }

  void all_reduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op, GpuStream s) override {
    const std::string where = fmt::format("all_reduce (fabric staging) on '{}'", name());
    const size_t es = dtype_size(dtype);
    std::byte* h = in_.get(count * es, where);
    if (count) MICS_COMM_CUDA(cudaMemcpyAsync(h, input, count * es, cudaMemcpyDeviceToHost, st(s)), where);
    synchronize(s, "all_reduce staging");
    host_.all_reduce(h, h, count, dtype, op);
    if (count) MICS_COMM_CUDA(cudaMemcpyAsync(output, h, count * es, cudaMemcpyHostToDevice, st(s)), where);
    synchronize(s, "all_reduce staging");
  }

  void synchronize(GpuStream s, const char* what) override {
    MICS_COMM_CUDA(cudaStreamSynchronize(st(s)), fmt::format("{} on '{}'", what, name()));
  }
  GpuBackend backend() const override { return GpuBackend::kFabric; }
  Traffic traffic() const override { return host_.traffic(); }

 private:
  Pinned in_, out_;
};

#ifdef MICS_HAVE_NCCL
// --- nccl ----------------------------------------------------------------------------------
ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kF32: return ncclFloat32;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    default: break;
  }
  throw Error(ErrorKind::kInvalidArgument, fmt::format("GPU collectives: no NCCL type for {}", to_string(t)),
              {.layer = "comm", .hint = "use f32, bf16 or f16"});
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
  }
  return ncclSum;
}

void unhex(const std::string& s, void* out, size_t n) {
  auto* p = static_cast<unsigned char*>(out);
  for (size_t i = 0; i < n && 2 * i + 1 < s.size(); ++i) p[i] = static_cast<unsigned char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
}

class NcclGpuComm final : public GpuComm {
 public:
  NcclGpuComm(Communicator& host, bootstrap::StoreClient& store) : GpuComm(host) {
    static int generation = 0;  // every rank creates its communicators in the same order
    const std::string key = fmt::format("mics/nccl/{}/{}/{}", ++generation, host.name(), host.global_rank(0));
    ncclUniqueId id;
    if (host.rank() == 0) {
      check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      store.set(key, hex(&id, sizeof id));
    } else {
      unhex(store.get(key), &id, sizeof id);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t res = ncclCommInitRankConfig(&comm_, host.size(), id, host.rank(), &config);
    if (res != ncclSuccess && res != ncclInProgress) fail(res, "ncclCommInitRankConfig");
    wait_ready("ncclCommInitRankConfig");
    const Traffic none{};
    traffic_ = none;
  }

  ~NcclGpuComm() override {
    if (comm_ && !aborted_) ncclCommDestroy(comm_);
  }

  void all_gather(const void* shard, void* output, size_t count, DType dtype, GpuStream s) override {
    even(count, "all_gather");
    const size_t block = count / static_cast<size_t>(size());
    enqueue(ncclAllGather(shard, output, block, nccl_type(dtype), comm_, st(s)), "all_gather");
    count_bytes((count - block) * dtype_size(dtype));
  }
  void reduce_scatter(const void* input, void* shard, size_t count, DType dtype, ReduceOp op, GpuStream s) override {
    even(count, "reduce_scatter");
    const size_t block = count / static_cast<size_t>(size());
    enqueue(ncclReduceScatter(input, shard, block, nccl_type(dtype), nccl_op(op), comm_, st(s)), "reduce_scatter");
    count_bytes((count - block) * dtype_size(dtype));
  }
  void all_reduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op, GpuStream s) override {
    enqueue(ncclAllReduce(input, output, count, nccl_type(dtype), nccl_op(op), comm_, st(s)), "all_reduce");
    const size_t n = static_cast<size_t>(size());
    count_bytes(2 * (count - count / n) * dtype_size(dtype));
  }

  void synchronize(GpuStream s, const char* what) override {
    const auto deadline = Clock::now() + std::chrono::duration<double>(knobs().timeout_s);
    for (int spins = 0;; ++spins) {
      const cudaError_t q = cudaStreamQuery(st(s));
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) {
        abort_comm();
        check_cuda(q, "cudaStreamQuery", fmt::format("{} on NCCL communicator '{}'", what, name()));
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) fail(async, what);
      if (Clock::now() > deadline) {
        abort_comm();
        throw Error(ErrorKind::kTimeout,
                    fmt::format("{} on NCCL communicator '{}' ({} ranks) did not finish within MICS_TIMEOUT_S={} s; "
                                "the communicator was aborted", what, name(), size(), knobs().timeout_s),
                    {.layer = "comm", .where = fmt::format("{} on '{}'", what, name()),
                     .hint = "a peer rank may have died or stalled; NCCL_DEBUG=WARN names NCCL's view"});
      }
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  GpuBackend backend() const override { return GpuBackend::kNccl; }
  Traffic traffic() const override { return traffic_; }

 private:
  void check(ncclResult_t r, const char* call) {
    if (r != ncclSuccess) fail(r, call);
  }
  [[noreturn]] void fail(ncclResult_t r, const std::string& what) {
    const char* last = comm_ ? ncclGetLastError(comm_) : nullptr;
    abort_comm();
    throw Error(r == ncclRemoteError ? ErrorKind::kPeerFailure : ErrorKind::kUnavailable,
                fmt::format("{} on NCCL communicator '{}' ({} ranks) failed: {}{}{}; the communicator was aborted", what,
                            name(), size(), ncclGetErrorString(r), last && *last ? ": " : "", last ? last : ""),
                {.layer = "comm", .where = fmt::format("{} on '{}'", what, name()),
                 .hint = r == ncclRemoteError ? "another rank failed: see its error"
                                              : "NCCL_DEBUG=WARN shows NCCL's reason; MICS_GPU_COMM=fabric avoids NCCL"});
  }
  void abort_comm() {
    if (comm_ && !aborted_) {
      aborted_ = true;
      ncclCommAbort(comm_);
    }
  }
  void wait_ready(const char* what) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(knobs().timeout_s);
    for (;;) {
      ncclResult_t state = ncclInProgress;
      ncclCommGetAsyncError(comm_, &state);
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) fail(state, what);
      if (Clock::now() > deadline) {
        abort_comm();
        throw Error(ErrorKind::kTimeout,
                    fmt::format("{} on NCCL communicator '{}' ({} ranks) did not complete within MICS_TIMEOUT_S={} s; "
                                "the communicator was aborted", what, name(), size(), knobs().timeout_s),
                    {.layer = "comm", .where = what, .hint = "every member must create the communicator; a rank may be missing"});
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  void enqueue(ncclResult_t r, const char* op) {
    if (aborted_)
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{} on NCCL communicator '{}' after it was aborted", op, name()),
                  {.layer = "comm", .hint = "a communicator is unusable after an error"});
    if (r == ncclInProgress) return wait_ready(op);
    if (r != ncclSuccess) fail(r, op);
  }
  void even(size_t count, const char* op) const {
    if (count % static_cast<size_t>(size()) != 0)
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("{} of {} elements over NCCL communicator '{}' of {} ranks: NCCL needs equal blocks", op,
                              count, name(), size()),
                  {.layer = "comm", .hint = "pad the array to a multiple of the group size"});
  }
  void count_bytes(size_t bytes) {
    const int rail = host_.num_nodes() > 1 ? static_cast<int>(fabric::Rail::kInter) : static_cast<int>(fabric::Rail::kIntra);
    traffic_.bytes_sent[rail] += bytes;
  }

  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
  Traffic traffic_;
};
#endif

std::string device_uuid(int device) {
  cudaDeviceProp prop{};
  MICS_COMM_CUDA(cudaGetDeviceProperties(&prop, device), "GPU selection");
  return hex(prop.uuid.bytes, sizeof prop.uuid.bytes);
}

}  // namespace

int select_gpu_device(const Runtime& runtime) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    throw Error(ErrorKind::kUnavailable,
                fmt::format("no CUDA device on rank {}: {}", runtime.rank(), err != cudaSuccess ? cudaGetErrorString(err) : "none visible"),
                {.layer = "comm", .hint = "run on a machine with an NVIDIA GPU (see mics doctor), or use --device cpu"});
  const auto& topo = runtime.topology();
  const int local = static_cast<size_t>(runtime.rank()) < topo.local_rank_of.size() ? topo.local_rank_of[static_cast<size_t>(runtime.rank())] : 0;
  const int device = local % count;
  MICS_COMM_CUDA(cudaSetDevice(device), "GPU selection");
  return device;
}

GpuBackendChoice choose_gpu_backend(Runtime& runtime, int device) {
  static int generation = 0;
  ++generation;
  const int world = runtime.world_size();
  runtime.store().set(fmt::format("mics/gpu/{}/{}", generation, runtime.rank()), device_uuid(device));
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back(fmt::format("mics/gpu/{}/{}", generation, r));
  const std::vector<std::string> uuids = runtime.store().get_many(keys);
  int shared_a = -1, shared_b = -1;
  for (int a = 0; a < world && shared_a < 0; ++a)
    for (int b = a + 1; b < world; ++b)
      if (uuids[static_cast<size_t>(a)] == uuids[static_cast<size_t>(b)]) {
        shared_a = a;
        shared_b = b;
        break;
      }
  const std::string& knob = knobs().gpu_comm;
#ifdef MICS_HAVE_NCCL
  const bool have_nccl = true;
#else
  const bool have_nccl = false;
#endif
  if (knob == "fabric") return {GpuBackend::kFabric, "fabric (MICS_GPU_COMM=fabric): device buffers staged through pinned host memory"};
  if (knob == "nccl") {
    if (!have_nccl)
      throw Error(ErrorKind::kConfig, "MICS_GPU_COMM=nccl, but this build of mics has no NCCL",
                  {.layer = "comm", .hint = "install NCCL and rebuild, or set MICS_GPU_COMM=auto"});
    if (shared_a >= 0)
      throw Error(ErrorKind::kConfig,
                  fmt::format("MICS_GPU_COMM=nccl, but ranks {} and {} share one GPU (NCCL needs a GPU per rank)", shared_a, shared_b),
                  {.layer = "comm", .hint = "start at most one rank per GPU, or set MICS_GPU_COMM=auto (fabric fallback)"});
    return {GpuBackend::kNccl, "nccl (MICS_GPU_COMM=nccl)"};
  }
  if (shared_a >= 0)
    return {GpuBackend::kFabric, fmt::format("fabric: ranks {} and {} share a GPU, so NCCL cannot serve; device buffers are "
                                             "staged through pinned host memory over the libfabric rails", shared_a, shared_b)};
  if (!have_nccl) return {GpuBackend::kFabric, "fabric: this build of mics has no NCCL"};
  return {GpuBackend::kNccl, "nccl: every rank has a GPU of its own"};
}

std::unique_ptr<GpuComm> make_gpu_comm(GpuBackend backend, Communicator& host, bootstrap::StoreClient& store) {
  if (backend == GpuBackend::kFabric) return std::make_unique<FabricGpuComm>(host);
#ifdef MICS_HAVE_NCCL
  return std::make_unique<NcclGpuComm>(host, store);
#else
  (void)store;
  throw Error(ErrorKind::kUnavailable, "NCCL communicator: this build of mics has no NCCL",
              {.layer = "comm", .hint = "use MICS_GPU_COMM=fabric, or rebuild with NCCL"});
#endif
}

#endif  // MICS_HAVE_CUDA

}  // namespace mics::comm
