// The rank mesh (topo/mesh.hpp) and `mics train --tensor-parallel t --pipeline-parallel s`
// (train/mesh_trainer.cpp) end to end: real ranks through `mics train -n N --nodes K`.
//
// Equivalence bound, as tests/train_test.cpp: |loss - reference| <= 1e-5 * reference over 4
// steps against the one-process run with the same global batch (16 sequences of 32 tokens).
// What a mesh changes is only the order of fp32 additions: the row-split GEMMs' partial sums
// added by the tensor all-reduce, the vocab-parallel softmax sums, the gradient reductions
// over data ranks and micro-steps (measured here: the printed losses agree to every digit).
// Eval: with S = 1 the final eval loss equals the one-process run's over the same 16 validation
// sequences within the same bound (evaluation traffic is left out of the formulas' counters).
// Traffic: every rank's counters must equal the formulas of mesh_trainer.cpp per dimension
// (tensor all-reduces, pipeline messages, the data-parallel engine), exactly.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "train_run.hpp"
#include "topo/mesh.hpp"

namespace {

namespace fs = std::filesystem;
using mics::topo::MeshCoord;
using mics::topo::MeshShape;

TEST(Mesh, DefaultPlacementPacksTensorRanksFirst) {
  const MeshShape m{2, 2, 2, 2, "tpsr"};
  for (int rank = 0; rank < m.size(); ++rank) {
    const MeshCoord c = mics::topo::mesh_coord(m, rank);
    EXPECT_EQ(rank, ((c.r * m.s + c.s) * m.p + c.p) * m.t + c.t);
    EXPECT_EQ(mics::topo::mesh_rank(m, c), rank);
  }
  EXPECT_EQ(mics::topo::mesh_coord(m, 1).t, 1);
  EXPECT_EQ(mics::topo::mesh_coord(m, 2).p, 1);
  EXPECT_EQ(mics::topo::mesh_coord(m, 4).s, 1);
  EXPECT_EQ(mics::topo::mesh_coord(m, 8 + 0).r, 1);
}

TEST(Mesh, OrderOverride) {
  const MeshShape m{1, 4, 1, 2, "ptsr"};  // data shards innermost
  EXPECT_EQ(mics::topo::mesh_coord(m, 1).p, 1);
  EXPECT_EQ(mics::topo::mesh_coord(m, 4).t, 1);
  for (int rank = 0; rank < m.size(); ++rank)
    EXPECT_EQ(mics::topo::mesh_rank(m, mics::topo::mesh_coord(m, rank)), rank);
  EXPECT_THROW(mics::topo::check_order("tpss"), mics::Error);
}

TEST(Mesh, StageLayersAreContiguous) {
  EXPECT_EQ(mics::topo::stage_layers(5, 2, 0).first, 0);
  EXPECT_EQ(mics::topo::stage_layers(5, 2, 0).count, 3);
  EXPECT_EQ(mics::topo::stage_layers(5, 2, 1).first, 3);
  EXPECT_EQ(mics::topo::stage_layers(5, 2, 1).count, 2);
}

std::string mesh_error(int world, int t, int s) {
  try {
    mics::topo::check_mesh(world, t, s, {4, 256, 2});
  } catch (const mics::Error& e) {
    return std::string(e.what()) + " | " + e.context().hint;
  }
  return "";
}

TEST(Mesh, InvalidMeshesListValidChoices) {
  EXPECT_EQ(mics::topo::check_mesh(8, 2, 2, {4, 256, 2}), 2);
  const std::string not_dividing = mesh_error(8, 3, 1);
  EXPECT_NE(not_dividing.find("does not divide N = 8"), std::string::npos) << not_dividing;
  EXPECT_NE(not_dividing.find("t=2 s=2 (r*p=2)"), std::string::npos) << not_dividing;
  const std::string heads = mesh_error(8, 8, 1);
  EXPECT_NE(heads.find("does not divide the 4 attention heads"), std::string::npos) << heads;
  const std::string layers = mesh_error(8, 1, 4);
  EXPECT_NE(layers.find("more than the 2 layers"), std::string::npos) << layers;
  EXPECT_NE(layers.find("t=4 s=1 (r*p=2)"), std::string::npos) << layers;
}

// --- end to end --------------------------------------------------------------------------------

const std::string& scratch() { return mics::testing::scratch_dir("mics-mesh-test"); }

using mics::testing::TrainRun;

TrainRun train(int ranks, int nodes, const std::string& args, const std::string& tag) {
  const std::string metrics = fmt::format("{}/{}.jsonl", scratch(), tag);
  return mics::testing::run_and_read_metrics(
      fmt::format("MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data {} train -n {} --nodes {} --model tiny --seq-len 32 --steps 4 "
                  "--samples 0 --eval-batches 1 --seed 3 {} --metrics {}",
                  scratch(), MICS_BINARY, ranks, nodes, args, metrics),
      metrics);
}

const std::vector<double>& reference() {
  static const std::vector<double> losses = [] {
    const TrainRun r = train(1, 1, "--strategy ddp --micro-batch 2 --grad-accum 8", "reference");
    EXPECT_EQ(r.result.status, 0) << r.result.output;
    return r.losses;
  }();
  return losses;
}

// The final eval loss of a one-process run over validation sequences 0..15 (one batch of 16):
// a mesh with D data ranks and B = 16/D reads sequences b*B*D + row*D + d, the same 16.
double reference_eval() {
  static const double loss = [] {
    const TrainRun r = train(1, 1, "--strategy ddp --micro-batch 16 --grad-accum 1", "reference-eval");
    EXPECT_EQ(r.result.status, 0) << r.result.output;
    return r.summary.value("eval_loss", nlohmann::json()).is_number() ? r.summary["eval_loss"].get<double>() : -1.0;
  }();
  return loss;
}

struct MeshCase {
  int t, s, p, r, nodes;
  bool accumulate;  // S > 1 micro-batches per step (B = 2), or S = 1 with the batch in B
  std::string extra;
};

std::string name_of(const MeshCase& m) {
  return fmt::format("t{}_s{}_p{}_r{}_{}nodes_{}{}", m.t, m.s, m.p, m.r, m.nodes, m.accumulate ? "accum" : "noaccum",
                     m.extra.empty() ? "" : "_gpipe");
}

class MeshTrain : public ::testing::TestWithParam<MeshCase> {};

TEST_P(MeshTrain, MatchesOneProcessAndTrafficFormulas) {
  const MeshCase m = GetParam();
  const int world = m.t * m.s * m.p * m.r, data = m.p * m.r;
  const int S = m.accumulate ? 8 / data : 1, B = m.accumulate ? 2 : 16 / data;
  const TrainRun run = train(world, m.nodes,
                        fmt::format("--tensor-parallel {} --pipeline-parallel {} --strategy mics --partition-size {} "
                                    "--micro-batch {} --grad-accum {} {}",
                                    m.t, m.s, m.p, B, S, m.extra),
                        name_of(m));
  const auto& ref = reference();
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  ASSERT_EQ(run.losses.size(), ref.size()) << run.result.output;
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(run.losses[i], ref[i], 1e-5 * ref[i]) << "step " << i + 1 << "\n" << run.result.output;
  ASSERT_TRUE(run.summary["eval_loss"].is_number()) << run.result.output;
  if (!m.accumulate) {  // B*D = 16: the reference's validation sequences
    const double ref_eval = reference_eval();
    ASSERT_GT(ref_eval, 0.0);
    EXPECT_NEAR(run.summary["eval_loss"].get<double>(), ref_eval, 1e-5 * ref_eval) << run.result.output;
  }
  const auto& mesh = run.summary["mesh"];
  EXPECT_EQ(mesh["t"], m.t);
  EXPECT_EQ(mesh["s"], m.s);
  EXPECT_EQ(mesh["p"], m.p);
  EXPECT_EQ(mesh["r"], m.r);
  EXPECT_TRUE(mesh["tensor_matches"].get<bool>()) << run.result.output;
  EXPECT_TRUE(mesh["pipeline_matches"].get<bool>()) << run.result.output;
  EXPECT_TRUE(mesh["data_matches"].get<bool>()) << run.result.output;
  EXPECT_TRUE(run.summary.value("traffic_matches_model", false)) << run.result.output;
  // Rank 0 is stage 0, tensor rank 0: its bytes per step by the formulas (N = B*T rows, C = 64).
  const double nc_bytes = 2.0 * 32 * 64 * 4 * (B / 2);
  if (m.s > 1) {
    EXPECT_DOUBLE_EQ(mesh["pipeline_bytes_per_step"][0].get<double>() + mesh["pipeline_bytes_per_step"][1].get<double>(),
                     S * nc_bytes);
    EXPECT_DOUBLE_EQ(mesh["bubble_fraction"].get<double>(), (m.s - 1.0) / (S + m.s - 1.0));
  } else {
    EXPECT_EQ(mesh["pipeline_bytes_per_step"][0].get<double>(), 0.0);
  }
  if (m.t == 1) {
    EXPECT_EQ(mesh["tensor_bytes_per_step"][0].get<double>(), 0.0);
  }
}

std::vector<MeshCase> cases() {
  std::vector<MeshCase> out;
  for (bool accumulate : {true, false}) {
    out.push_back({2, 1, 2, 2, 2, accumulate, ""});  // t=2, p=2, r=2
    out.push_back({1, 2, 2, 2, 2, accumulate, ""});  // s=2, p=2, r=2
    out.push_back({2, 2, 2, 1, 2, accumulate, ""});  // t=2, s=2, p=2
    out.push_back({4, 1, 2, 1, 2, accumulate, ""});  // t=4, p=2
  }
  out.push_back({1, 2, 2, 2, 2, true, "--pipeline-schedule gpipe"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Meshes, MeshTrain, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) { return name_of(param_info.param); });

TEST(MeshTrainErrors, InvalidMeshIsOneClearLine) {
  struct Bad {
    std::string args, expect;
  };
  for (const Bad& b : {Bad{"--tensor-parallel 3", "does not divide N = 8"},
                       Bad{"--tensor-parallel 8", "does not divide the 4 attention heads"},
                       Bad{"--pipeline-parallel 4", "more than the 2 layers"}}) {
    const TrainRun run = train(8, 2, b.args + " --partition-size 0", "bad");
    EXPECT_NE(run.result.status, 0) << run.result.output;
    EXPECT_NE(run.result.output.find(b.expect), std::string::npos) << run.result.output;
    EXPECT_NE(run.result.output.find("valid choices"), std::string::npos) << run.result.output;
  }
}

}  // namespace
