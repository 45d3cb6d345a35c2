// The sharded engine against single-process training: real processes started by `mics launch`
// over the real shm and tcp rails, 1..8 ranks on 1, 2 and 4 emulated nodes. Each rank runs
// engine_worker.cpp, which trains an MLP with uneven layer sizes (13 -> 17 -> 9 -> 5, so every
// unit is padded) through the engine under ddp, zero3 and mics (p = 2, 4 where valid), with
// S = 1 and 4 micro-steps, and checks the final parameters against the reference trainer
// (max |difference| <= 1e-5 x max |param|), the traffic counters against expected_traffic()
// per rail exactly, and the model-state memory.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <map>
#include <regex>
#include <sstream>

#include "process_util.hpp"

namespace {

struct Layout {
  int ranks;
  int nodes;
};

mics::testing::RunResult launch(const Layout& l, const std::string& args) {
  const auto result = mics::testing::run_command(
      fmt::format("MICS_TIMEOUT_S=60 {} launch -n {} --nodes {} -- {} {}", MICS_BINARY, l.ranks,
                  l.nodes, MICS_ENGINE_WORKER, args));
  std::printf("%d ranks on %d node(s), %s: %.1f s\n", l.ranks, l.nodes, args.c_str(),
              result.seconds);
  return result;
}

class EngineEquivalence : public ::testing::TestWithParam<Layout> {};

// Every strategy and partition size that fits the layout, S = 1 and S = 4.
TEST_P(EngineEquivalence, StrategiesMatchReference) {
  // Eight ranks on two cores: a representative subset keeps the run short.
  const std::string args =
      GetParam().ranks == 8 ? "--steps 3 --configs ddp,zero3,mics:2,mics:4" : "--steps 4";
  const auto result = launch(GetParam(), args);
  EXPECT_EQ(result.status, 0) << result.output;
}

std::vector<Layout> layouts() {
  return {{1, 1}, {2, 1}, {2, 2}, {4, 1}, {4, 2}, {4, 4}, {8, 2}};
}

INSTANTIATE_TEST_SUITE_P(Layouts, EngineEquivalence, ::testing::ValuesIn(layouts()),
                         [](const auto& info) {
                           return fmt::format("n{}_nodes{}", info.param.ranks, info.param.nodes);
                         });

TEST(EngineEquivalenceMore, EightRanksFourNodesMics) {
  const auto result = launch({8, 4}, "--steps 3 --configs mics:2,mics:4 --accums 4");
  EXPECT_EQ(result.status, 0) << result.output;
}

TEST(EngineEquivalenceMore, ClippingMatchesReference) {
  // clip 1e-4 is far below every step's gradient norm: every step is clipped, and the
  // worker checks that the parameters then differ from unclipped training.
  const auto result = launch({4, 2}, "--clip 1e-4 --configs zero3,mics:2 --accums 1,2");
  EXPECT_EQ(result.status, 0) << result.output;
}

TEST(EngineEquivalenceMore, NonFiniteGradientSkipsTheStep) {
  // A NaN in one rank's gradient at step 2: every rank skips that step (StepReport.skipped)
  // and the result equals reference training with the step skipped.
  const auto result =
      launch({4, 2}, "--nan-at-step 2 --nan-rank 3 --steps 5 --configs ddp,zero3,mics:2");
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_NE(result.output.find("skipped"), std::string::npos) << result.output;
}

TEST(EngineEquivalenceMore, KeepGatheredAndLargeUnits) {
  // One gather per unit per micro-step; units above the 64 KiB small-message threshold.
  const auto result = launch(
      {4, 2}, "--keep-gathered --sizes 129,131,67,3 --batch 2 --steps 3 --configs zero3,mics:2");
  EXPECT_EQ(result.status, 0) << result.output;
}

TEST(EngineEquivalenceMore, Bf16GradientCommunication) {
  // Gradients reduce-scattered in bf16 (fp32 accumulation): bf16 rounding, a looser bound.
  const auto result = launch({4, 2}, "--comm-dtype bf16 --tol 2e-3 --configs zero3,mics:2");
  EXPECT_EQ(result.status, 0) << result.output;
}

TEST(EngineEquivalenceMore, ReplicatedSmallUnits) {
  // The last layer (50 elements) stays replicated on every rank.
  const auto result = launch({4, 2}, "--replicate-below 64 --configs ddp,zero3,mics:2");
  EXPECT_EQ(result.status, 0) << result.output;
}

// Sum over ranks of the inter-node bytes of each configuration, from the worker's lines
// "traffic [CONFIG] rank R intra X inter Y expected ...".
std::map<std::string, unsigned long long> inter_node_bytes(const std::string& output) {
  std::map<std::string, unsigned long long> sums;
  const std::regex line(R"(traffic \[([^\]]+)\] rank \d+ intra \d+ inter (\d+))");
  for (std::sregex_iterator it(output.begin(), output.end(), line), end; it != end; ++it)
    sums[(*it)[1]] += std::stoull((*it)[2]);
  return sums;
}

TEST(EngineTraffic, MicsCrossesTheNetworkAtLeastSTimesLessThanZero3) {
  // 2 nodes x 2 ranks, S = 4: MiCS p = 2 keeps every gather and reduce-scatter inside a
  // node; only the 2-hop all-reduce (once per step) crosses the network.
  const auto result = launch({4, 2}, "--steps 2 --configs zero3,mics:2 --accums 4");
  ASSERT_EQ(result.status, 0) << result.output;
  const auto sums = inter_node_bytes(result.output);
  ASSERT_TRUE(sums.count("zero3 S=4") && sums.count("mics p=2 S=4")) << result.output;
  const auto zero3 = sums.at("zero3 S=4"), mics = sums.at("mics p=2 S=4");
  std::printf("inter-node bytes, all ranks, 2 steps: zero3 %llu, mics %llu (%.1fx)\n", zero3, mics,
              static_cast<double>(zero3) / static_cast<double>(mics));
  EXPECT_GT(mics, 0u);
  EXPECT_LE(4 * mics, zero3);
}

TEST(EngineErrors, InvalidPartitionSizeListsValidValues) {
  const auto result = launch({4, 1}, "--strict --configs mics:3 --accums 1");
  EXPECT_NE(result.status, 0) << result.output;
  EXPECT_NE(result.output.find("valid here"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("1, 2, 4"), std::string::npos) << result.output;
}

}  // namespace
