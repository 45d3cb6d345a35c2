// GPU collectives (comm/gpu_comm.hpp) on device buffers against a host reference, with ranks
// started by `mics launch` on this machine's one GPU: the fabric backend (pinned staging over
// the libfabric rails) at 1, 2 and 3 ranks on one GPU (CUDA_VISIBLE_DEVICES=0, so the ranks share
// it), NCCL at 1 rank (a one-member communicator), and, on a machine with two GPUs or more, NCCL
// at 2 ranks on one node and on 2 emulated nodes (bench/emulated_node.sh: a GPU and an
// NCCL_HOSTID per node, so NCCL carries the traffic over its NET transport), plus a peer that
// dies during an NCCL all-reduce: the survivor must fail within MICS_TIMEOUT_S with an error
// naming the operation and the communicator, not hang.
//
// Inputs are small integers, so every sum is exact in f32 (and in bf16 below 256): results must
// equal the reference bit for bit. Outputs are poisoned with NaN bytes first. The fabric
// backend's traffic must equal comm::predict_traffic for each call, per rail.
// Without a CUDA device every test is skipped with the reason.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/cuda_info.hpp"
#include "base/dtype.hpp"
#include "base/error.hpp"
#include "comm/gpu_comm.hpp"
#include "comm/layout.hpp"
#include "comm/runtime.hpp"
#include "comm/traffic_model.hpp"
#include "model/cuda/gpt_cuda.hpp"
#include "process_util.hpp"

#ifdef MICS_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

#define SKIP_WITHOUT_GPU()                                                          \
  do {                                                                              \
    const std::string why = mics::model::cuda::device_unavailable_reason();         \
    if (!why.empty()) GTEST_SKIP() << why << " (GPU tests skipped)";                \
  } while (0)

#define SKIP_WITHOUT_TWO_GPUS()                                                                   \
  do {                                                                                            \
    SKIP_WITHOUT_GPU();                                                                           \
    if (const int gpus = mics::query_cuda_info().device_count; gpus < 2)                          \
      GTEST_SKIP() << "needs 2 GPUs, this machine shows " << gpus << " (multi-GPU NCCL tests skipped)"; \
  } while (0)

#ifdef MICS_HAVE_CUDA
using mics::DType;
using mics::ReduceOp;

float value(int rank, size_t i) { return static_cast<float>((rank + 1) * static_cast<int>(i % 13) - 5); }

template <class T>
struct DeviceArray {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)), cudaSuccess);
    cudaMemset(p, 0xff, std::max<size_t>(count, 1) * sizeof(T));  // NaN poison
  }
  ~DeviceArray() { cudaFree(p); }
  void put(const std::vector<T>& h) { cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> get(size_t count) const {
    std::vector<T> h(count);
    cudaMemcpy(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

void add(mics::comm::Traffic& a, const mics::comm::Traffic& b) {
  for (size_t i = 0; i < a.bytes_sent.size(); ++i) a.bytes_sent[i] += b.bytes_sent[i];
}
#endif

}  // namespace

// The rank program: runs only under `mics launch` with MICS_GPU_COMM_TEST_WORKER=1.
TEST(GpuComm, Worker) {
  if (!std::getenv("MICS_GPU_COMM_TEST_WORKER")) GTEST_SKIP() << "the rank program of the tests below";
#ifdef MICS_HAVE_CUDA
  namespace comm = mics::comm;
  auto rt = comm::Runtime::start("gpu-comm-test");
  const int device = comm::select_gpu_device(*rt);
  const comm::GpuBackendChoice choice = comm::choose_gpu_backend(*rt, device);
  std::printf("rank %d: GPU %d, backend choice: %s: %s\n", rt->rank(), device, comm::to_string(choice.backend),
              choice.reason.c_str());
  const std::string want = std::getenv("MICS_GPU_COMM_TEST_BACKEND") ? std::getenv("MICS_GPU_COMM_TEST_BACKEND") : "";
  const comm::GpuBackend backend = want == "nccl" ? comm::GpuBackend::kNccl
                                   : want == "fabric" ? comm::GpuBackend::kFabric
                                                      : choice.backend;
  auto world = rt->world().split(0, rt->rank(), "gpu-test");
  if (world->num_nodes() > 1 && world->members_per_node() > 1) world->cross_node();  // set-up traffic first
  auto g = comm::make_gpu_comm(backend, *world, rt->store());
  const int n = g->size(), me = g->rank();
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const bool nccl = backend == comm::GpuBackend::kNccl;
  if (std::getenv("MICS_GPU_COMM_TEST_PEER_DEATH")) {
    // One all-reduce that everyone finishes, then the last rank kills itself and the others
    // start another: they must fail on their own within MICS_TIMEOUT_S, naming op and group.
    const size_t count = size_t{1} << 20;
    DeviceArray<float> a(count);
    g->all_reduce(a.p, a.p, count, DType::kF32, ReduceOp::kSum, stream);
    g->synchronize(stream, "warm-up all_reduce");
    std::printf("rank %d: warm-up done\n", me);
    std::fflush(stdout);
    if (me == n - 1) std::raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const auto t0 = std::chrono::steady_clock::now();
    try {
      g->all_reduce(a.p, a.p, count, DType::kF32, ReduceOp::kSum, stream);
      g->synchronize(stream, "all_reduce");
    } catch (const mics::Error& e) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("rank %d: failed after %.1f s: %s\n", me, s, e.what());
      std::fflush(stdout);
      std::_Exit(3);
    }
    std::printf("rank %d: all_reduce finished without its peer\n", me);
    std::_Exit(4);
  }
  std::vector<size_t> counts = {static_cast<size_t>(n), static_cast<size_t>(5 * n), static_cast<size_t>(1000 * n),
                                static_cast<size_t>((1 << 20) * n)};
  if (!nccl) counts.insert(counts.end(), {0, 1, 7, 100003});
  comm::Traffic predicted, before = g->traffic();
  for (size_t count : counts) {
    SCOPED_TRACE(fmt::format("count {} over {} ranks ({})", count, n, comm::to_string(backend)));
    const comm::Block mine = comm::block_of(count, n, me);
    std::vector<float> in(count);
    for (size_t i = 0; i < count; ++i) in[i] = value(me, i);
    // all_reduce
    {
      DeviceArray<float> a(count), b(count);
      a.put(in);
      g->all_reduce(a.p, b.p, count, DType::kF32, ReduceOp::kSum, stream);
      g->synchronize(stream, "test all_reduce");
      const auto out = b.get(count);
      for (size_t i = 0; i < count; ++i) {
        float sum = 0;
        for (int r = 0; r < n; ++r) sum += value(r, i);
        ASSERT_EQ(out[i], sum) << "all_reduce element " << i;
      }
      if (!nccl) add(predicted, comm::predict_traffic(*world, "all_reduce", count, DType::kF32));
    }
    // reduce_scatter
    {
      DeviceArray<float> a(count), b(mine.count);
      a.put(in);
      g->reduce_scatter(a.p, b.p, count, DType::kF32, ReduceOp::kSum, stream);
      g->synchronize(stream, "test reduce_scatter");
      const auto out = b.get(mine.count);
      for (size_t j = 0; j < mine.count; ++j) {
        float sum = 0;
        for (int r = 0; r < n; ++r) sum += value(r, mine.offset + j);
        ASSERT_EQ(out[j], sum) << "reduce_scatter element " << j;
      }
      if (!nccl) add(predicted, comm::predict_traffic(*world, "reduce_scatter", count, DType::kF32));
    }
    // all_gather: member r's block holds value(r, i)
    {
      std::vector<float> shard(mine.count);
      for (size_t j = 0; j < mine.count; ++j) shard[j] = value(me, mine.offset + j);
      DeviceArray<float> a(mine.count), b(count);
      a.put(shard);
      g->all_gather(a.p, b.p, count, DType::kF32, stream);
      g->synchronize(stream, "test all_gather");
      const auto out = b.get(count);
      for (int r = 0; r < n; ++r) {
        const comm::Block blk = comm::block_of(count, n, r);
        for (size_t j = 0; j < blk.count; ++j) ASSERT_EQ(out[blk.offset + j], value(r, blk.offset + j)) << "all_gather block " << r;
      }
      if (!nccl) add(predicted, comm::predict_traffic(*world, "all_gather", count, DType::kF32));
    }
    // bf16 all_reduce of small integers (exact)
    {
      std::vector<uint16_t> h(count);
      for (size_t i = 0; i < count; ++i) h[i] = mics::f32_to_bf16(value(me, i));
      DeviceArray<uint16_t> a(count);
      a.put(h);
      g->all_reduce(a.p, a.p, count, DType::kBF16, ReduceOp::kSum, stream);
      g->synchronize(stream, "test bf16 all_reduce");
      const auto out = a.get(count);
      for (size_t i = 0; i < count; ++i) {
        float sum = 0;
        for (int r = 0; r < n; ++r) sum += value(r, i);
        ASSERT_EQ(mics::bf16_to_f32(out[i]), sum) << "bf16 all_reduce element " << i;
      }
      if (!nccl) add(predicted, comm::predict_traffic(*world, "all_reduce", count, DType::kBF16));
    }
  }
  if (!nccl) {
    const comm::Traffic after = g->traffic();
    for (size_t rail = 0; rail < after.bytes_sent.size(); ++rail)
      EXPECT_EQ(after.bytes_sent[rail] - before.bytes_sent[rail], predicted.bytes_sent[rail]) << "rail " << rail;
  }
  std::printf("rank %d: %zu counts checked over %s\n", rt->rank(), counts.size(), comm::to_string(backend));
  g.reset();
  world.reset();
  cudaStreamDestroy(stream);
  rt->finish();
#endif
}

namespace {
// Ranks share GPU 0 unless `own_gpus`: then each (emulated) node gets its own GPUs through
// bench/emulated_node.sh, which also gives each node its own NCCL_HOSTID.
mics::testing::RunResult launch(int ranks, int nodes, const std::string& backend, const std::string& extra_env = "",
                                bool own_gpus = false) {
  return mics::testing::run_command(fmt::format(
      "MICS_TIMEOUT_S=60 NCCL_NVLS_ENABLE=0 MICS_GPU_COMM_TEST_WORKER=1 MICS_GPU_COMM_TEST_BACKEND={} {} {} {} launch -n {} "
      "--nodes {} -- {} /proc/{}/exe --gtest_filter=GpuComm.Worker 2>&1",
      backend, own_gpus ? "" : "CUDA_VISIBLE_DEVICES=0", extra_env, MICS_BINARY, ranks, nodes,
      own_gpus ? MICS_SOURCE_DIR "/bench/emulated_node.sh" : "", ::getpid()));
}
}  // namespace

class GpuCommFabric : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(GpuCommFabric, MatchesHostReferenceAndTrafficModel) {
  SKIP_WITHOUT_GPU();
  const auto [ranks, nodes] = GetParam();
  const auto r = launch(ranks, nodes, "fabric");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("counts checked over fabric"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("FAILED"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(Ranks, GpuCommFabric,
                         ::testing::Values(std::pair{1, 1}, std::pair{2, 1}, std::pair{3, 1}, std::pair{4, 2}));

TEST(GpuComm, SharedGpuChoosesFabric) {
  SKIP_WITHOUT_GPU();
  const auto r = launch(2, 1, "");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("backend choice: fabric: fabric: ranks 0 and 1 share a GPU"), std::string::npos) << r.output;
}

TEST(GpuComm, NcclOneRankMatchesHostReference) {
  SKIP_WITHOUT_GPU();
#ifndef MICS_HAVE_NCCL
  GTEST_SKIP() << "this build has no NCCL";
#endif
  const auto r = launch(1, 1, "nccl", "NCCL_NVLS_ENABLE=0");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("backend choice: nccl: nccl: every rank has a GPU of its own"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("counts checked over nccl"), std::string::npos) << r.output;
}

TEST(GpuComm, ForcedNcclOnASharedGpuIsAClearError) {
  SKIP_WITHOUT_GPU();
#ifndef MICS_HAVE_NCCL
  GTEST_SKIP() << "this build has no NCCL";
#endif
  const auto r = launch(2, 1, "", "MICS_GPU_COMM=nccl");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("ranks 0 and 1 share one GPU"), std::string::npos) << r.output;
}

class GpuCommNccl : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(GpuCommNccl, OwnGpusPickNcclAndMatchHostReference) {
  SKIP_WITHOUT_TWO_GPUS();
#ifndef MICS_HAVE_NCCL
  GTEST_SKIP() << "this build has no NCCL";
#endif
  const auto [ranks, nodes] = GetParam();
  if (const int gpus = mics::query_cuda_info().device_count; gpus < ranks)
    GTEST_SKIP() << ranks << " ranks need " << ranks << " GPUs, this machine shows " << gpus;
  const auto r = launch(ranks, nodes, "", nodes > 1 ? "NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,P2P,NET" : "", true);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("backend choice: nccl: nccl: every rank has a GPU of its own"), std::string::npos) << r.output;
  size_t checked = 0;
  for (size_t at = r.output.find("counts checked over nccl"); at != std::string::npos;
       at = r.output.find("counts checked over nccl", at + 1))
    ++checked;
  EXPECT_EQ(checked, static_cast<size_t>(ranks)) << r.output;
  // Across emulated nodes NCCL must take the nodes for hosts of their own: its NET transport.
  if (nodes > 1) {
    EXPECT_NE(r.output.find("via NET/"), std::string::npos) << r.output;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, GpuCommNccl, ::testing::Values(std::pair{2, 1}, std::pair{2, 2}, std::pair{4, 1}, std::pair{4, 2}),
                         [](const auto& param_info) { return fmt::format("{}r{}n", param_info.param.first, param_info.param.second); });

// A peer killed between two NCCL all-reduces: NCCL itself does not notice a dead peer on the
// same host (its kernels wait on the peer's flags), so the survivor's synchronize() must reach
// MICS_TIMEOUT_S, abort the communicator and throw. Started without `mics launch`, whose job is
// to stop the survivors itself once a rank dies.
TEST(GpuComm, NcclPeerDeathFailsWithinTheDeadline) {
  SKIP_WITHOUT_TWO_GPUS();
#ifndef MICS_HAVE_NCCL
  GTEST_SKIP() << "this build has no NCCL";
#endif
  constexpr int kTimeoutS = 5;
  const int port = mics::testing::free_port();
  std::string cmd;
  for (int rank = 0; rank < 2; ++rank)
    cmd += fmt::format(
        "MICS_RANK={0} MICS_WORLD_SIZE=2 MICS_LOCAL_RANK={0} MICS_NODE_ID=node0 MICS_MASTER_ADDR=127.0.0.1 "
        "MICS_MASTER_PORT={1} MICS_JOB_TOKEN=nccl-death-test MICS_TIMEOUT_S={2} NCCL_NVLS_ENABLE=0 "
        "MICS_GPU_COMM_TEST_WORKER=1 MICS_GPU_COMM_TEST_PEER_DEATH=1 timeout -s KILL {3} /proc/{4}/exe "
        "--gtest_filter=GpuComm.Worker > /tmp/nccl-death-{4}.{0} 2>&1 & ",
        rank, port, kTimeoutS, 4 * kTimeoutS + 20, ::getpid());
  cmd += fmt::format("wait; cat /tmp/nccl-death-{0}.0; echo ---; cat /tmp/nccl-death-{0}.1; rm -f /tmp/nccl-death-{0}.*", ::getpid());
  const auto r = mics::testing::run_command(cmd);
  ASSERT_NE(r.output.find("rank 0: warm-up done"), std::string::npos) << r.output;
  ASSERT_NE(r.output.find("rank 0: failed after"), std::string::npos) << "the survivor did not fail on its own:\n" << r.output;
  const std::string line = r.output.substr(r.output.find("rank 0: failed after"));
  EXPECT_NE(line.find("all_reduce"), std::string::npos) << line;
  EXPECT_NE(line.find("NCCL communicator 'gpu-test'"), std::string::npos) << line;
  EXPECT_NE(line.find("aborted"), std::string::npos) << line;
  const double seconds = std::stod(line.substr(std::string("rank 0: failed after ").size()));
  EXPECT_LE(seconds, 2.0 * kTimeoutS + 5) << line;
  std::printf("[ peer death ] %s\n", line.substr(0, line.find('\n')).c_str());
}
