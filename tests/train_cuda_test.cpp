// `mics train --device cuda` with several ranks on one GPU (CUDA_VISIBLE_DEVICES=0): the ranks
// share the GPU, so the GPU collectives take the fabric fallback (pinned host staging over the
// libfabric rails); and, on a machine with two GPUs or more, ranks with a GPU each over NCCL (one
// node, and emulated nodes through bench/emulated_node.sh). The tiny GPT, the same seed and global batch (ranks x S x B = 8 sequences) as a
// one-rank GPU run with S = 4 and the CPU `mics train`.
//
// Bounds (relative, per step, 6 steps):
//  - against the one-rank GPU run: 2e-3. Both compute every micro-batch with the same bf16
//    kernels; what differs is the order of the fp32 gradient sums (over ranks and micro-steps)
//    and, from step 2, fp32 rounding of the parameters that can flip a bf16 rounding. With
//    --gather-dtype bf16 (one fabric and one NCCL layout): 5e-3, as LayerNorm weights and biases
//    then arrive bf16-rounded.
//  - against the CPU run (fp32 everywhere): 2e-2, the whole-model bf16 loss bound of
//    tests/model_cuda_test.cpp (kLossTol 1e-2) doubled for the steps that follow.
// Each run's summary must say the engine's byte counters equal its traffic formula (two gathers,
// fp32 or bf16, and one fp32 reduce-scatter per unit per micro-step, shard/cuda_engine.hpp), and its model
// states per rank must be (params + grads + 2 moments) / p: 16 bytes x params / p, plus at most
// the padding of each unit to a multiple of the world size.
// Without a CUDA device every test is skipped with the reason.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/cuda_info.hpp"
#include "model/cuda/gpt_cuda.hpp"
#include "train_run.hpp"

namespace {

namespace fs = std::filesystem;

#define SKIP_WITHOUT_GPU()                                                  \
  do {                                                                      \
    const std::string why = mics::model::cuda::device_unavailable_reason(); \
    if (!why.empty()) GTEST_SKIP() << why << " (GPU tests skipped)";        \
  } while (0)

const std::string& scratch() { return mics::testing::scratch_dir("mics-train-cuda-test"); }

using mics::testing::TrainRun;

const std::string kCommon = "--micro-batch 2 --seq-len 32 --samples 0 --eval-batches 1 --seed 3 --lr 3e-3";

// `env` goes before the command; by default every rank sees GPU 0 only.
TrainRun train(const std::string& args, const std::string& tag, const std::string& env = "CUDA_VISIBLE_DEVICES=0",
               const std::string& model = "tiny") {
  const std::string metrics = fmt::format("{}/{}.jsonl", scratch(), tag);
  const std::string steps = args.find("--steps") == std::string::npos ? "--steps 6" : "";  // 6 unless the args say
  return mics::testing::run_and_read_metrics(
      fmt::format("MICS_TIMEOUT_S=60 NCCL_NVLS_ENABLE=0 MICS_DATA_DIR={}/data {} {} train --model {} {} {} {} --metrics {} 2>&1",
                  scratch(), env, MICS_BINARY, model, kCommon, steps, args, metrics),
      metrics);
}

const TrainRun& gpu_reference() {
  static const TrainRun run = train("--device cuda --grad-accum 4", "gpu1");
  return run;
}
const TrainRun& cpu_reference() {
  static const TrainRun run = train("--device cpu --grad-accum 4", "cpu1");
  return run;
}

struct Layout {
  int ranks, nodes;
  std::string strategy;
  int partition, grad_accum;
  std::string gather_dtype = "f32";
};

std::string name(const Layout& l) {
  return fmt::format("{}r{}n_{}_p{}_S{}{}", l.ranks, l.nodes, l.strategy, l.partition, l.grad_accum,
                     l.gather_dtype == "f32" ? "" : "_gather_" + l.gather_dtype);
}

// Every step's loss within `bound_gpu` (relative) of the one-GPU run and 2e-2 of the CPU run;
// prints the worst differences.
void expect_losses_follow(const TrainRun& run, const TrainRun& gpu, double bound_gpu, const TrainRun& cpu,
                          const std::string& tag) {
  double worst_gpu = 0, worst_cpu = 0;
  for (size_t i = 0; i < run.losses.size() && i < gpu.losses.size() && i < cpu.losses.size(); ++i) {
    const double dg = std::abs(run.losses[i] - gpu.losses[i]) / gpu.losses[i];
    const double dc = std::abs(run.losses[i] - cpu.losses[i]) / cpu.losses[i];
    worst_gpu = std::max(worst_gpu, dg);
    worst_cpu = std::max(worst_cpu, dc);
    EXPECT_LE(dg, bound_gpu) << "step " << i + 1 << ": " << run.losses[i] << " vs one GPU " << gpu.losses[i];
    EXPECT_LE(dc, 2e-2) << "step " << i + 1 << ": " << run.losses[i] << " vs CPU " << cpu.losses[i];
  }
  std::printf("[ %s ] worst relative loss difference: vs 1 GPU %.2e, vs CPU %.2e\n", tag.c_str(), worst_gpu, worst_cpu);
}

// Runs layout `l` and checks it against the one-GPU and CPU references (losses), its traffic
// formula and its model states per rank. `nccl`: one GPU per rank, else all on GPU 0.
void check_layout(const Layout& l, bool nccl) {
  const TrainRun& ref = gpu_reference();
  ASSERT_EQ(ref.result.status, 0) << ref.result.output;
  ASSERT_EQ(ref.losses.size(), 6u) << ref.result.output;
  const TrainRun& cpu = cpu_reference();
  ASSERT_EQ(cpu.losses.size(), 6u) << cpu.result.output;
  const std::string args = fmt::format("--device cuda -n {} --nodes {} --strategy {} --partition-size {} --grad-accum {} --gather-dtype {}",
                                       l.ranks, l.nodes, l.strategy, l.partition, l.grad_accum, l.gather_dtype);
  // With a GPU per rank, `mics train -n` cannot place emulated nodes on GPUs of their own, so
  // the ranks are started by `mics launch` through bench/emulated_node.sh.
  const TrainRun run =
      nccl ? train(fmt::format("{}", args), name(l) + "_nccl",
                   fmt::format("{} launch -n {} --nodes {} -- {}/bench/emulated_node.sh", MICS_BINARY, l.ranks, l.nodes,
                               MICS_SOURCE_DIR))
           : train(args, name(l));
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  if (nccl)
    EXPECT_NE(run.result.output.find("GPU collectives: nccl"), std::string::npos) << run.result.output;
  else
    EXPECT_NE(run.result.output.find("share a GPU"), std::string::npos) << run.result.output;
  ASSERT_EQ(run.losses.size(), 6u) << run.result.output;
  // bf16 gathers round the LayerNorm weights and biases the one-GPU run reads in fp32 (the
  // GEMM weights are the same bf16 either way): a looser bound against it.
  const double bound_gpu = l.gather_dtype == "bf16" ? 5e-3 : 2e-3;
  expect_losses_follow(run, ref, bound_gpu, cpu, name(l));
  EXPECT_LT(run.losses.back(), run.losses.front());
  EXPECT_TRUE(run.summary.value("traffic_matches_model", false)) << run.result.output;
  EXPECT_NE(run.summary.value("strategy", std::string()).find(nccl ? "nccl collectives" : "fabric collectives"), std::string::npos)
      << run.summary.dump();
  // Model states per rank shrink with p: 16 B x params / p (+ padding: < world floats per unit).
  const int p = l.strategy == "ddp" ? 1 : l.strategy == "zero3" ? l.ranks : l.partition;
  const uint64_t params = run.summary.value("params", uint64_t{0});
  const uint64_t states = run.summary.value("model_state_bytes_per_rank", uint64_t{0});
  ASSERT_GT(params, 0u) << run.summary.dump();
  EXPECT_GE(states * static_cast<uint64_t>(p), 16 * params) << run.summary.dump();
  constexpr uint64_t kMaxUnits = 64;  // tiny: far fewer
  EXPECT_LT(states * static_cast<uint64_t>(p), 16 * (params + kMaxUnits * static_cast<uint64_t>(l.ranks))) << run.summary.dump();
  EXPECT_NE(run.result.output.find("working buffers"), std::string::npos) << run.result.output;
  std::printf("[ %s ] model states per rank %llu bytes (p=%d, %llu params)\n", name(l).c_str(),
              static_cast<unsigned long long>(states), p, static_cast<unsigned long long>(params));
}

class TrainCuda : public ::testing::TestWithParam<Layout> {};

TEST_P(TrainCuda, FabricFallbackFollowsOneGpuAndCpu) {
  SKIP_WITHOUT_GPU();
  check_layout(GetParam(), false);
}

INSTANTIATE_TEST_SUITE_P(Layouts, TrainCuda,
                         ::testing::Values(Layout{2, 1, "zero3", 0, 2}, Layout{2, 1, "ddp", 0, 2},
                                           Layout{4, 1, "mics", 2, 1}, Layout{4, 2, "mics", 2, 1},
                                           Layout{4, 1, "zero3", 0, 1}, Layout{4, 2, "mics", 2, 1, "bf16"}),
                         [](const auto& param_info) { return name(param_info.param); });

class TrainCudaNccl : public ::testing::TestWithParam<Layout> {};

TEST_P(TrainCudaNccl, GpuPerRankFollowsOneGpuAndCpu) {
  SKIP_WITHOUT_GPU();
  const Layout l = GetParam();
  if (const int gpus = mics::query_cuda_info().device_count; gpus < l.ranks)
    GTEST_SKIP() << l.ranks << " ranks need " << l.ranks << " GPUs, this machine shows " << gpus << " (multi-GPU tests skipped)";
  check_layout(l, true);
}

// The same global batch (ranks x S x B = 8): 2 GPUs ZeRO-3 and DDP; MiCS p=1 on 2 emulated
// nodes (replicas across nodes: the 2-hop all-reduce over NCCL's NET transport), and on 4 GPUs
// MiCS p=2 across 2 emulated nodes.
INSTANTIATE_TEST_SUITE_P(Layouts, TrainCudaNccl,
                         ::testing::Values(Layout{2, 1, "zero3", 0, 2}, Layout{2, 1, "ddp", 0, 2}, Layout{2, 2, "mics", 1, 2},
                                           Layout{2, 2, "zero3", 0, 2}, Layout{4, 2, "mics", 2, 1},
                                           Layout{2, 1, "zero3", 0, 2, "bf16"}),
                         [](const auto& param_info) { return name(param_info.param); });

// --recompute on one GPU and on 2 ranks sharing it (ZeRO-3): the same losses as the one-GPU run
// without it, within the GPU layouts' 2e-3 (the rerun forward computes the same values; the
// fused attention's dQ atomics make two runs differ in the last bits).
TEST(TrainCudaRecompute, FollowsTheRunWithout) {
  SKIP_WITHOUT_GPU();
  const TrainRun& ref = gpu_reference();
  ASSERT_EQ(ref.losses.size(), 6u) << ref.result.output;
  for (const auto& [tag, args] : std::vector<std::pair<std::string, std::string>>{
           {"recompute_one_gpu", "--device cuda --grad-accum 4 --recompute"},
           {"recompute_zero3_2r", "--device cuda -n 2 --strategy zero3 --grad-accum 2 --recompute"}}) {
    const TrainRun run = train(args, tag);
    ASSERT_EQ(run.result.status, 0) << run.result.output;
    EXPECT_NE(run.result.output.find("recompute: blocks keep their inputs only"), std::string::npos)
        << run.result.output;
    expect_losses_follow(run, ref, 2e-3, cpu_reference(), tag);
  }
}

// --eval-every on the GPU trainer: an eval loss after steps 2 and 4 of 6 (the last step's is the
// summary's), the same on one GPU and on 2 ranks sharing it (ZeRO-3, whose eval gathers are left
// out of the traffic check).
TEST(TrainCudaEval, EvalEveryOnOneGpuAndSharded) {
  SKIP_WITHOUT_GPU();
  std::vector<std::vector<double>> evals;
  for (const auto& [tag, args] : std::vector<std::pair<std::string, std::string>>{
           {"eval_every_one_gpu", "--device cuda --grad-accum 4 --eval-every 2"},
           {"eval_every_zero3_2r", "--device cuda -n 2 --strategy zero3 --grad-accum 2 --eval-every 2"}}) {
    const TrainRun run = train(args, tag);
    ASSERT_EQ(run.result.status, 0) << run.result.output;
    EXPECT_TRUE(run.summary.value("traffic_matches_model", false)) << run.result.output;
    std::ifstream in(fmt::format("{}/{}.jsonl", scratch(), tag));
    std::vector<double> got;
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.value("event", "") == "step" && j.contains("eval_loss")) {
        EXPECT_EQ(j.value("step", 0) % 2, 0) << line;
        got.push_back(j.value("eval_loss", 0.0));
      }
    }
    ASSERT_EQ(got.size(), 2u) << tag;
    evals.push_back(got);
  }
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(evals[1][i], evals[0][i], 2e-3 * evals[0][i]);
  std::printf("[ eval-every ] eval losses after steps 2, 4: one GPU %.6f %.6f, 2 ranks %.6f %.6f\n", evals[0][0],
              evals[0][1], evals[1][0], evals[1][1]);
}

// Checkpoints of the one-GPU and the GPU-sharded trainer (train/checkpoint.hpp's logical files,
// through OneGpuState and CudaEngine's CheckpointState): a one-GPU run saving at step 2 of 4,
// resumed on one GPU (steps 3-4 within 1e-3 of the straight run: two GPU runs need not agree bit
// for bit), by 2 ranks sharing the GPU (ZeRO-3, the same global batch: the GPU layouts' 2e-3) and
// by the CPU trainer (2e-2); and the 2-rank run's own checkpoint resumed on one GPU (2e-3).
TEST(TrainCudaCheckpoint, ResumesAcrossGpuLayoutsAndTheCpu) {
  SKIP_WITHOUT_GPU();
  const std::string a = scratch() + "/ckpt_one_gpu", z = scratch() + "/ckpt_zero3";
  fs::remove_all(a);
  fs::remove_all(z);
  const TrainRun straight =
      train(fmt::format("--device cuda --grad-accum 4 --steps 4 --ckpt-every 2 --out {}", a), "ckpt_straight");
  ASSERT_EQ(straight.result.status, 0) << straight.result.output;
  ASSERT_EQ(straight.losses.size(), 4u) << straight.result.output;
  ASSERT_TRUE(fs::exists(a + "/step-00000002/manifest.json")) << straight.result.output;
  ASSERT_TRUE(fs::exists(a + "/step-00000004/manifest.json")) << straight.result.output;  // the final save
  const std::string from = a + "/step-00000002";
  struct Case {
    std::string tag, args;
    double bound;
  };
  const std::vector<Case> cases = {
      {"ckpt_resume_one_gpu", fmt::format("--device cuda --grad-accum 4 --steps 4 --resume {}", from), 1e-3},
      {"ckpt_resume_zero3_2r",
       fmt::format("--device cuda -n 2 --strategy zero3 --grad-accum 2 --steps 4 --resume {}", from), 2e-3},
      {"ckpt_resume_cpu", fmt::format("--device cpu --grad-accum 4 --steps 4 --resume {}", from), 2e-2},
  };
  for (const Case& k : cases) {
    const TrainRun run = train(k.args, k.tag);
    ASSERT_EQ(run.result.status, 0) << run.result.output;
    ASSERT_EQ(run.losses.size(), 2u) << run.result.output;
    for (size_t i = 0; i < 2; ++i) {
      const double want = straight.losses[2 + i];
      EXPECT_LE(std::abs(run.losses[i] - want) / want, k.bound)
          << k.tag << " step " << 3 + i << ": " << run.losses[i] << " vs " << want;
      std::printf("[ %s ] step %zu: straight %.6f, resumed %.6f\n", k.tag.c_str(), 3 + i, want, run.losses[i]);
    }
  }
  // The GPU-sharded run's checkpoint, back on one GPU.
  const TrainRun sharded =
      train(fmt::format("--device cuda -n 2 --strategy zero3 --grad-accum 2 --steps 4 --ckpt-every 2 --out {}", z),
            "ckpt_zero3_straight");
  ASSERT_EQ(sharded.result.status, 0) << sharded.result.output;
  ASSERT_EQ(sharded.losses.size(), 4u) << sharded.result.output;
  const TrainRun back =
      train(fmt::format("--device cuda --grad-accum 4 --steps 4 --resume {}/step-00000002", z), "ckpt_zero3_to_one");
  ASSERT_EQ(back.result.status, 0) << back.result.output;
  ASSERT_EQ(back.losses.size(), 2u) << back.result.output;
  for (size_t i = 0; i < 2; ++i) {
    const double want = sharded.losses[2 + i];
    EXPECT_LE(std::abs(back.losses[i] - want) / want, 2e-3)
        << "step " << 3 + i << ": " << back.losses[i] << " vs " << want;
    std::printf("[ ckpt_zero3_to_one ] step %zu: straight (2 ranks) %.6f, resumed on one GPU %.6f\n", 3 + i, want,
                back.losses[i]);
  }
}

// `mics train --device cuda --tensor-parallel t --pipeline-parallel s` (the GPU mesh stage,
// model/cuda/gpt_tp_cuda.hpp), every rank on GPU 0, against the one-GPU run and the CPU run of
// the same model and global batch (D x S x B = 8 sequences). A model with a head size of 64
// (the fused attention kernels): L2H4C256. Bounds as above: what differs from the one-GPU run is
// the order of fp32 sums, the tensor group's bf16 LayerNorm-output gradients summed in fp32 and
// rounded once, and AdamW on the host; every rank's traffic must equal the mesh formulas (with
// --sequence-parallel its gathers and reduce-scatters, with --recompute each block's forward
// collectives twice).
struct MeshLayout {
  int t, s, ranks;
  std::string strategy;
  int partition, grad_accum;
  bool sequence_parallel = false, recompute = false;
};

std::string mesh_name(const MeshLayout& l) {
  return fmt::format("t{}_s{}_{}r_{}_p{}_S{}{}{}", l.t, l.s, l.ranks, l.strategy, l.partition, l.grad_accum,
                     l.sequence_parallel ? "_sp" : "", l.recompute ? "_recompute" : "");
}

const std::string kMeshModel = "L2H4C256";

class TrainCudaMesh : public ::testing::TestWithParam<MeshLayout> {};

TEST_P(TrainCudaMesh, GpuStagesFollowOneGpuAndCpu) {
  SKIP_WITHOUT_GPU();
  const MeshLayout l = GetParam();
  static const TrainRun gpu1 = train("--device cuda --grad-accum 4", "mesh_gpu1", "CUDA_VISIBLE_DEVICES=0", kMeshModel);
  static const TrainRun cpu1 = train("--device cpu --grad-accum 4", "mesh_cpu1", "CUDA_VISIBLE_DEVICES=0", kMeshModel);
  ASSERT_EQ(gpu1.losses.size(), 6u) << gpu1.result.output;
  ASSERT_EQ(cpu1.losses.size(), 6u) << cpu1.result.output;
  const TrainRun run = train(
      fmt::format("--device cuda -n {} --tensor-parallel {} --pipeline-parallel {} --strategy {} --partition-size {} "
                  "--grad-accum {}{}{}",
                  l.ranks, l.t, l.s, l.strategy, l.partition, l.grad_accum,
                  l.sequence_parallel ? " --sequence-parallel" : "", l.recompute ? " --recompute" : ""),
      "mesh_" + mesh_name(l), "CUDA_VISIBLE_DEVICES=0", kMeshModel);
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  EXPECT_NE(run.result.output.find("device cuda: each rank's stage on its GPU"), std::string::npos) << run.result.output;
  ASSERT_EQ(run.losses.size(), 6u) << run.result.output;
  expect_losses_follow(run, gpu1, 5e-3, cpu1, mesh_name(l));
  EXPECT_LT(run.losses.back(), run.losses.front());
  EXPECT_TRUE(run.summary.value("traffic_matches_model", false)) << run.result.output;
  EXPECT_NE(run.summary.value("strategy", std::string()).find("mesh stages on GPUs"), std::string::npos) << run.summary.dump();
}

INSTANTIATE_TEST_SUITE_P(Meshes, TrainCudaMesh,
                         ::testing::Values(MeshLayout{2, 1, 2, "ddp", 0, 4}, MeshLayout{1, 2, 2, "ddp", 0, 4},
                                           MeshLayout{2, 2, 4, "ddp", 0, 4}, MeshLayout{2, 1, 4, "mics", 2, 2},
                                           MeshLayout{4, 1, 4, "ddp", 0, 4}, MeshLayout{2, 1, 2, "ddp", 0, 4, true},
                                           MeshLayout{1, 2, 2, "ddp", 0, 4, false, true},
                                           MeshLayout{2, 2, 4, "ddp", 0, 4, true, true},
                                           MeshLayout{2, 1, 4, "mics", 2, 2, true}),
                         [](const auto& param_info) { return mesh_name(param_info.param); });

// Checkpoints of a GPU mesh (the shards live on the host; train/checkpoint.hpp's logical
// layout): a t2 s2 run saving at step 2, resumed on the same GPU mesh, repeats the straight
// run's steps 3-4 (within 1e-3: the fused attention's backward adds dQ with atomics, so two GPU
// runs need not agree bit for bit), and the same checkpoint resumed by the one-process CPU
// trainer follows within the CPU bound (2e-2).
TEST(TrainCudaMeshCheckpoint, ResumesOnTheGpuMeshAndOnTheCpu) {
  SKIP_WITHOUT_GPU();
  const std::string mesh = "--device cuda -n 4 --tensor-parallel 2 --pipeline-parallel 2 --grad-accum 4";
  const std::string a = scratch() + "/mesh_ckpt_a";
  fs::remove_all(a);
  const TrainRun straight = train(fmt::format("{} --steps 4 --ckpt-every 2 --out {}", mesh, a), "mesh_ckpt_straight",
                                  "CUDA_VISIBLE_DEVICES=0", kMeshModel);
  ASSERT_EQ(straight.result.status, 0) << straight.result.output;
  ASSERT_EQ(straight.losses.size(), 4u) << straight.result.output;
  ASSERT_TRUE(fs::exists(a + "/step-00000002")) << straight.result.output;
  const TrainRun gpu = train(fmt::format("{} --steps 4 --resume {}/step-00000002 --out {}/mesh_ckpt_b", mesh, a, scratch()),
                             "mesh_ckpt_gpu", "CUDA_VISIBLE_DEVICES=0", kMeshModel);
  ASSERT_EQ(gpu.result.status, 0) << gpu.result.output;
  const TrainRun cpu = train(fmt::format("--device cpu --grad-accum 4 --steps 4 --resume {}/step-00000002 --out {}/mesh_ckpt_c", a,
                                         scratch()),
                             "mesh_ckpt_cpu", "CUDA_VISIBLE_DEVICES=0", kMeshModel);
  ASSERT_EQ(cpu.result.status, 0) << cpu.result.output;
  ASSERT_EQ(gpu.losses.size(), 2u) << gpu.result.output;
  ASSERT_EQ(cpu.losses.size(), 2u) << cpu.result.output;
  for (size_t i = 0; i < 2; ++i) {
    const double want = straight.losses[2 + i];
    EXPECT_LE(std::abs(gpu.losses[i] - want) / want, 1e-3) << "step " << 3 + i << ": resumed " << gpu.losses[i] << " vs " << want;
    EXPECT_LE(std::abs(cpu.losses[i] - want) / want, 2e-2) << "step " << 3 + i << ": CPU " << cpu.losses[i] << " vs " << want;
    std::printf("[ mesh checkpoint ] step %zu: straight %.6f, resumed on the GPU mesh %.6f, on the CPU %.6f\n", 3 + i, want,
                gpu.losses[i], cpu.losses[i]);
  }
}

TEST(TrainCudaMeshFlags, RefusedWithAClearError) {
  SKIP_WITHOUT_GPU();
  // tiny's head size (16) has no fused attention kernels: refused before any rank starts.
  const auto r = mics::testing::run_command(fmt::format("{} train --model tiny --device cuda -n 2 --tensor-parallel 2 --steps 1 2>&1",
                                                        MICS_BINARY));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("head sizes 64 and 128"), std::string::npos) << r.output;
}

}  // namespace
