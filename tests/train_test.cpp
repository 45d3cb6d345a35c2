// `mics train` end to end: real ranks (mics launch, and Open MPI's mpirun) over the shm and
// tcp rails, the tiny GPT on the embedded corpus.
//
// Equivalence: ddp, zero3 and mics with the same seed and global batch (ranks x S x B = 16
// sequences) follow the single-process loss curve. What differs between layouts is only the
// order of fp32 additions (gradient reductions over ranks and micro-steps, the loss mean), so
// the curves agree to rounding, amplified a little by Adam's normalisation over a few steps:
// the bound is |loss - reference| <= 1e-5 * reference over 4 steps (the largest difference
// measured over this grid is 1e-7 relative; a wrong gradient scale or a missed micro-batch
// moves the loss by 1e-2 or more after the first update).
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "train_run.hpp"

namespace {

namespace fs = std::filesystem;

// A scratch directory per test process; the embedded corpus is cached there once.
const std::string& scratch() { return mics::testing::scratch_dir("mics-train-test"); }

std::string env_prefix() {
  return fmt::format("MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data", scratch());
}

using mics::testing::TrainRun;

const std::string kCommon =
    "--model tiny --micro-batch 2 --seq-len 32 --steps 4 --samples 0 --eval-batches 1 --seed 3";

TrainRun train(int ranks, int nodes, const std::string& args, const std::string& tag) {
  const std::string metrics = fmt::format("{}/{}.jsonl", scratch(), tag);
  return mics::testing::run_and_read_metrics(
      fmt::format("{} {} train -n {} --nodes {} {} {} --metrics {}", env_prefix(), MICS_BINARY,
                  ranks, nodes, kCommon, args, metrics),
      metrics);
}

const std::vector<double>& reference_losses() {
  static const std::vector<double> losses = [] {
    const TrainRun run = train(1, 1, "--strategy ddp --grad-accum 8", "reference");
    EXPECT_EQ(run.result.status, 0) << run.result.output;
    return run.losses;
  }();
  return losses;
}

void expect_matches_reference(const TrainRun& run) {
  const auto& ref = reference_losses();
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  ASSERT_EQ(run.losses.size(), ref.size()) << run.result.output;
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(run.losses[i], ref[i], 1e-5 * ref[i]) << "step " << i + 1 << "\n"
                                                      << run.result.output;
  EXPECT_TRUE(run.summary.value("traffic_matches_model", false)) << run.result.output;
}

struct Layout {
  int ranks, nodes;
  std::string strategy;
};

std::string name_of(const Layout& l) {
  std::string s = fmt::format("{}ranks_{}nodes_{}", l.ranks, l.nodes, l.strategy);
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

class TrainEquivalence : public ::testing::TestWithParam<Layout> {};

TEST_P(TrainEquivalence, LossCurveMatchesOneProcess) {
  const Layout l = GetParam();
  const int accum = 8 / l.ranks;
  const TrainRun run =
      train(l.ranks, l.nodes, fmt::format("--grad-accum {} --strategy {}", accum, l.strategy),
            name_of(l));
  expect_matches_reference(run);
  EXPECT_EQ(run.summary["world_size"], l.ranks);
  EXPECT_EQ(run.summary["nodes"], l.nodes);
}

std::vector<Layout> layouts() {
  std::vector<Layout> out;
  for (const char* s : {"ddp", "zero3", "mics"}) {
    out.push_back({2, 1, s});
    out.push_back({4, 2, s});
  }
  out.push_back({2, 2, "mics --partition-size 2"});
  out.push_back({4, 1, "mics --partition-size 2"});
  out.push_back({4, 4, "mics --partition-size 2"});
  out.push_back({8, 2, "mics --partition-size 4"});
  out.push_back({8, 4, "mics --partition-size 2"});
  out.push_back({8, 2, "zero3"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Layouts, TrainEquivalence, ::testing::ValuesIn(layouts()),
                         [](const auto& param_info) { return name_of(param_info.param); });

TEST(Train, MpirunTrainsExactlyLikeMicsLaunch) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "mpirun (openmpi-bin) not installed";
  const std::string args = "--strategy mics --partition-size 2 --grad-accum 2";
  const TrainRun launched = train(4, 1, args, "launched");
  ASSERT_EQ(launched.result.status, 0) << launched.result.output;
  const std::string metrics = scratch() + "/mpirun.jsonl";
  const int port = mics::testing::free_port();
  const TrainRun mpi = mics::testing::run_and_read_metrics(
      fmt::format("{} MICS_MASTER_ADDR=127.0.0.1 MICS_MASTER_PORT={} mpirun --allow-run-as-root "
                  "--oversubscribe -np 4 "
                  "-x MICS_TIMEOUT_S -x MICS_DATA_DIR -x MICS_MASTER_ADDR -x MICS_MASTER_PORT {} "
                  "train {} {} --metrics {}",
                  env_prefix(), port, MICS_BINARY, kCommon, args, metrics),
      metrics);
  ASSERT_EQ(mpi.result.status, 0) << mpi.result.output;
  ASSERT_EQ(mpi.losses.size(), launched.losses.size());
  for (size_t i = 0; i < mpi.losses.size(); ++i)
    EXPECT_EQ(mpi.losses[i], launched.losses[i]) << "step " << i + 1;
  EXPECT_EQ(mpi.summary["world_size"], 4);
}

TEST(Train, SummaryHasTheDocumentedFields) {
  const TrainRun run = train(4, 2, "--strategy mics --partition-size 2 --grad-accum 2", "summary");
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  for (const char* key :
       {"strategy", "world_size", "nodes", "partition_size", "grad_accum", "steps", "final_loss",
        "eval_loss", "entropy_floor", "tokens_per_s", "intra_node_bytes_per_step",
        "inter_node_bytes_per_step", "model_state_bytes_per_rank", "peak_rss_bytes"})
    EXPECT_TRUE(run.summary.contains(key)) << key;
  EXPECT_EQ(run.summary["partition_size"], 2);
  // p = 2 = ranks per node: gathers and reduce-scatters stay on the node; only the 2-hop
  // all-reduce of the shards crosses nodes.
  EXPECT_GT(run.summary["intra_node_bytes_per_step"].get<double>(), 0);
  EXPECT_GT(run.summary["inter_node_bytes_per_step"].get<double>(), 0);
  EXPECT_LT(run.summary["inter_node_bytes_per_step"].get<double>(),
            run.summary["intra_node_bytes_per_step"].get<double>());
  EXPECT_GT(run.summary["entropy_floor"].get<double>(), 0);
  // The start-up block and the samples are printed.
  EXPECT_NE(run.result.output.find("memory per rank"), std::string::npos) << run.result.output;
  EXPECT_NE(run.result.output.find("rails: intra-node shm"), std::string::npos)
      << run.result.output;
}

TEST(Train, RecomputeGivesTheSameLossWithLessActivationMemory) {
  const TrainRun plain = train(2, 1, "--strategy zero3 --grad-accum 4", "plain");
  const TrainRun recompute =
      train(2, 1, "--strategy zero3 --grad-accum 4 --recompute", "recompute");
  ASSERT_EQ(plain.result.status, 0) << plain.result.output;
  ASSERT_EQ(recompute.result.status, 0) << recompute.result.output;
  EXPECT_EQ(plain.losses, recompute.losses);
  EXPECT_LT(recompute.summary["activation_bytes"].get<uint64_t>(),
            plain.summary["activation_bytes"].get<uint64_t>());
}

TEST(Train, SigtermStopsCleanlyAfterTheCurrentStep) {
  const std::string metrics = scratch() + "/sigterm.jsonl";
  // A long run; SIGTERM to the launcher after the first steps reach the metrics file.
  const std::string cmd = fmt::format(
      "{} {} train -n 2 --model tiny --micro-batch 2 --seq-len 32 --steps 100000 --samples 0 "
      "--metrics {} & pid=$!; "
      "for i in $(seq 1 600); do [ -s {} ] && [ $(grep -c '\"step\"' {}) -ge 2 ] && break; sleep "
      "0.1; done; "
      "kill -TERM $pid; wait $pid",
      env_prefix(), MICS_BINARY, metrics, metrics, metrics);
  const TrainRun run = mics::testing::run_and_read_metrics(cmd, metrics);
  EXPECT_EQ(run.result.status, 128 + SIGTERM)
      << run.result.output;  // the launcher reports the signal
  EXPECT_GE(run.losses.size(), 2u);
  EXPECT_LT(run.losses.size(), 100000u);
  ASSERT_TRUE(run.summary.is_object()) << run.result.output;
  EXPECT_TRUE(run.summary["stopped_early"].get<bool>());
  EXPECT_EQ(run.summary["steps"].get<size_t>(), run.losses.size());
  EXPECT_NE(run.result.output.find("stopping after step"), std::string::npos) << run.result.output;
}

TEST(Train, ConfigFileSettingsAndFlagsOverrideThem) {
  const std::string config = scratch() + "/settings.toml";
  std::ofstream(config)
      << "[train]\nstrategy = \"zero3\"  # a comment\ngrad_accum = 3\nsteps = 9\n";
  const TrainRun run = train(2, 1, "--config " + config, "config");  // with --steps 4
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  EXPECT_EQ(run.summary["strategy"], "zero3");
  EXPECT_EQ(run.summary["grad_accum"], 3);
  EXPECT_EQ(run.summary["steps"], 4);  // the flag wins over the file's 9
}

// Bad input: one line naming what and where, non-zero exit, nothing written.
struct BadInput {
  std::string name, args, expect;
};

class TrainBadInput : public ::testing::TestWithParam<BadInput> {};

TEST_P(TrainBadInput, OneLineErrorAndNothingWritten) {
  const BadInput b = GetParam();
  const std::string out = fmt::format("{}/bad-{}", scratch(), b.name);
  const auto r =
      mics::testing::run_command(fmt::format("cd {} && {} {} train -n 2 --steps 2 --out {} {}",
                                             scratch(), env_prefix(), MICS_BINARY, out, b.args));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(b.expect), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out)) << r.output;
  // One error line (the message, with its hint on the same line).
  size_t error_lines = 0;
  for (size_t at = r.output.find("error:"); at != std::string::npos;
       at = r.output.find("error:", at + 1))
    ++error_lines;
  EXPECT_EQ(error_lines, 1u) << r.output;
}

std::vector<BadInput> bad_inputs() {
  const std::string dir = scratch() + "/shards";
  fs::create_directories(dir);
  // A truncated shard: the header says 1000 tokens, the file holds 10.
  {
    std::ofstream f(dir + "/short_train_000000.bin", std::ios::binary);
    int32_t header[256] = {20240520, 1, 1000};
    f.write(reinterpret_cast<const char*>(header), sizeof(header));
    const uint16_t tokens[10] = {};
    f.write(reinterpret_cast<const char*>(tokens), sizeof(tokens));
  }
  // A token id beyond the tiny model's vocabulary of 256.
  {
    std::ofstream f(dir + "/big_train_000000.bin", std::ios::binary);
    int32_t header[256] = {20240520, 1, 200};
    f.write(reinterpret_cast<const char*>(header), sizeof(header));
    std::vector<uint16_t> tokens(200, 7);
    tokens[123] = 300;
    f.write(reinterpret_cast<const char*>(tokens.data()),
            static_cast<std::streamsize>(tokens.size() * 2));
  }
  return {
      {"missing_shard", "--data " + dir + "/nothing_*.bin", "nothing_"},
      {"truncated_shard", "--data " + dir + "/short_train_000000.bin", "short_train_000000.bin"},
      {"token_out_of_range", "--data " + dir + "/big_train_000000.bin", "300"},
      {"unknown_preset", "--model gpt5", "gpt5"},
      {"does_not_fit", "--model gpt2-1.5b --strategy ddp --memory-budget 1GiB", "budget"},
      {"partition_with_ddp", "--strategy ddp --partition-size 2", "--partition-size"},
      {"invalid_partition", "--strategy mics --partition-size 3", "3"},
      {"seq_too_long", "--seq-len 4096", "--seq-len"},
      // the GPU trainer without a mesh has no Chrome trace: refused before anything runs (GPU or not)
      {"cuda_trace", "--device cuda --trace " + dir + "/trace.json", "--trace"},
      {"unknown_config_setting",
       "--config " +
           [&] {
             const std::string path = dir + "/bad.toml";
             std::ofstream(path) << "steps = 3\nbogus_knob = 1\n";
             return path;
           }(),
       "bad.toml:2: unknown setting 'bogus-knob'"},
  };
}

INSTANTIATE_TEST_SUITE_P(Cases, TrainBadInput, ::testing::ValuesIn(bad_inputs()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
