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
// Sequence parallelism (--sequence-parallel) changes the order of additions once more (the
// LayerNorm and bias gradients summed over the tensor ranks' positions), so it is held to the
// same bound; its tensor formula (all-gathers, reduce-scatters, the rep units' all-reduces) and
// its pipeline messages of N/t rows are checked the same way, and its LayerNorm-region
// activations must be exactly 1/t of the plain layout's. --recompute must give bit-identical
// losses and gradient norms to the same mesh without it.
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

TrainRun train(int ranks, int nodes, const std::string& args, const std::string& tag, int seq_len = 32) {
  const std::string metrics = fmt::format("{}/{}.jsonl", scratch(), tag);
  return mics::testing::run_and_read_metrics(
      fmt::format("MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data {} train -n {} --nodes {} --model tiny --seq-len {} --steps 4 "
                  "--samples 0 --eval-batches 1 --seed 3 {} --metrics {}",
                  scratch(), MICS_BINARY, ranks, nodes, seq_len, args, metrics),
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
  std::string tag;  // the test name's suffix for `extra`
};

std::string name_of(const MeshCase& m) {
  return fmt::format("t{}_s{}_p{}_r{}_{}nodes_{}{}", m.t, m.s, m.p, m.r, m.nodes, m.accumulate ? "accum" : "noaccum",
                     m.tag.empty() ? "" : "_" + m.tag);
}

bool has_flag(const MeshCase& m, const char* flag) { return m.extra.find(flag) != std::string::npos; }

// Bytes of rank 0's kept LayerNorm-region activations (model/gpt_tp.hpp): per in-flight
// micro-batch, the input of each of its Lb blocks and the stage's output (rows x C each), each
// kept block's ln1, res2, ln2 (rows x C) and four row statistics, and on the last stage lnf and
// its two statistics; rows = B*T, or B*T/t with sequence parallelism. C = 64, tiny has 2 layers.
double layernorm_region_bytes(const MeshCase& m, int S, int B) {
  const double C = 64, rows = B * 32.0 / (has_flag(m, "--sequence-parallel") ? m.t : 1);
  const int Lb = 2 / m.s, kept = has_flag(m, "--recompute") ? 1 : Lb;
  const int slots = has_flag(m, "gpipe") ? S : std::min(S, m.s);  // micro-batches in flight on stage 0
  const bool last = m.s == 1;
  return 4.0 * slots * ((Lb + 1) * rows * C + kept * (3 * rows * C + 4 * rows) + (last ? rows * C + 2 * rows : 0.0));
}

// Runs mesh m and checks it against the one-process run and the formulas; returns the run.
TrainRun check_mesh_run(const MeshCase& m) {
  const int world = m.t * m.s * m.p * m.r, data = m.p * m.r;
  const int S = m.accumulate ? 8 / data : 1, B = m.accumulate ? 2 : 16 / data;
  const TrainRun run = train(world, m.nodes,
                        fmt::format("--tensor-parallel {} --pipeline-parallel {} --strategy mics --partition-size {} "
                                    "--micro-batch {} --grad-accum {} {}",
                                    m.t, m.s, m.p, B, S, m.extra),
                        name_of(m));
  const auto& ref = reference();
  EXPECT_EQ(run.result.status, 0) << run.result.output;
  EXPECT_EQ(run.losses.size(), ref.size()) << run.result.output;
  if (run.result.status != 0 || run.losses.size() != ref.size()) return run;
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(run.losses[i], ref[i], 1e-5 * ref[i]) << "step " << i + 1 << "\n" << run.result.output;
  EXPECT_TRUE(run.summary["eval_loss"].is_number()) << run.result.output;
  if (!m.accumulate && run.summary["eval_loss"].is_number()) {  // B*D = 16: the reference's validation sequences
    const double ref_eval = reference_eval();
    EXPECT_GT(ref_eval, 0.0);
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
  EXPECT_TRUE(run.summary["collectives"].value("records_match_fabric", false)) << run.result.output;
  // Rank 0 is stage 0, tensor rank 0: its bytes per step by the formulas (N = B*T rows, C = 64;
  // a pipeline message carries N/t rows with sequence parallelism).
  const bool sp = has_flag(m, "--sequence-parallel");
  const double nc_bytes = 2.0 * 32 * 64 * 4 * (B / 2) / (sp ? m.t : 1);
  EXPECT_EQ(mesh["sequence_parallel"].get<bool>(), sp);
  EXPECT_DOUBLE_EQ(mesh["layernorm_region_bytes"].get<double>(), layernorm_region_bytes(m, S, B)) << run.result.output;
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
  return run;
}

// gtest prints a parameter that fails by this (not as raw bytes).
void PrintTo(const MeshCase& m, std::ostream* os) { *os << name_of(m) << " " << m.extra; }

class MeshTrain : public ::testing::TestWithParam<MeshCase> {};

TEST_P(MeshTrain, MatchesOneProcessAndTrafficFormulas) { check_mesh_run(GetParam()); }

std::vector<MeshCase> cases() {
  std::vector<MeshCase> out;
  for (bool accumulate : {true, false}) {
    out.push_back({2, 1, 2, 2, 2, accumulate, ""});  // t=2, p=2, r=2
    out.push_back({1, 2, 2, 2, 2, accumulate, ""});  // s=2, p=2, r=2
    out.push_back({2, 2, 2, 1, 2, accumulate, ""});  // t=2, s=2, p=2
    out.push_back({4, 1, 2, 1, 2, accumulate, ""});  // t=4, p=2
  }
  out.push_back({1, 2, 2, 2, 2, true, "--pipeline-schedule gpipe", "gpipe"});
  // Sequence parallelism (t2·p2·r2 with accumulation runs in MeshRecompute below).
  const std::string sp = "--sequence-parallel";
  out.push_back({2, 1, 2, 2, 2, false, sp, "seqpar"});
  out.push_back({2, 2, 2, 1, 2, true, sp, "seqpar"});
  out.push_back({2, 2, 2, 1, 2, false, sp, "seqpar"});
  out.push_back({4, 1, 2, 1, 2, true, sp, "seqpar"});
  out.push_back({4, 1, 2, 1, 2, false, sp, "seqpar"});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Meshes, MeshTrain, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) { return name_of(param_info.param); });

std::vector<double> step_field(const std::string& metrics_path, const char* field) {
  std::vector<double> out;
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["event"] == "step") out.push_back(j[field].get<double>());
  }
  return out;
}

// t2·p2·r2 with accumulation and sequence parallelism (two blocks per rank), without and with
// --recompute (and --trace): both follow the one-process curve; recompute gives the same
// losses and gradient norms bit for bit, keeps one block's activations instead of two, and
// moves each block's forward collectives once more (the tensor formula's rc term;
// tensor_matches checks it on every rank).
TEST(MeshRecompute, BitIdenticalWithSequenceParallelAndTrace) {
  const MeshCase plain{2, 1, 2, 2, 2, true, "--sequence-parallel", "seqpar"};
  const std::string trace = scratch() + "/trace.json";
  const MeshCase rc{2, 1, 2, 2, 2, true, "--sequence-parallel --recompute --trace " + trace, "seqpar_recompute"};
  const TrainRun a = check_mesh_run(plain), b = check_mesh_run(rc);
  ASSERT_EQ(a.result.status, 0) << a.result.output;
  ASSERT_EQ(b.result.status, 0) << b.result.output;
  EXPECT_EQ(a.losses, b.losses) << b.result.output;
  EXPECT_EQ(step_field(scratch() + "/" + name_of(plain) + ".jsonl", "grad_norm"),
            step_field(scratch() + "/" + name_of(rc) + ".jsonl", "grad_norm"));
  EXPECT_TRUE(b.summary["mesh"]["recompute"].get<bool>());
  EXPECT_LT(b.summary["mesh"]["activation_bytes"].get<double>(), a.summary["mesh"]["activation_bytes"].get<double>());
  EXPECT_GT(b.summary["mesh"]["tensor_bytes_per_step"][0].get<double>(),
            a.summary["mesh"]["tensor_bytes_per_step"][0].get<double>());
  // The trace: one file per rank, the tensor group's all-gathers and reduce-scatters on the
  // comm thread, the blocks' spans on the main thread.
  for (int rank = 0; rank < 8; ++rank) EXPECT_TRUE(fs::exists(fmt::format("{}/trace.rank{}.json", scratch(), rank))) << rank;
  std::ifstream in(scratch() + "/trace.rank0.json");
  const auto j = nlohmann::json::parse(in);
  int tensor_gathers = 0, tensor_scatters = 0, block_spans = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e.value("ph", "") != "X") continue;
    const std::string name = e.value("name", ""), group = e["args"].value("group", "");
    if (group == "tensor" && name.find("all_gather") != std::string::npos) ++tensor_gathers;
    if (group == "tensor" && name.find("reduce_scatter") != std::string::npos) ++tensor_scatters;
    if (name.find("recompute+backward block") != std::string::npos) ++block_spans;
  }
  EXPECT_GT(tensor_gathers, 0);
  EXPECT_GT(tensor_scatters, 0);
  EXPECT_EQ(block_spans, 4 * 2 * 2);  // 4 steps x S = 2 micro-batches x 2 blocks
}

TEST(MeshTrainErrors, SequenceParallelNeedsTDividingT) {
  const TrainRun run = train(8, 2, "--tensor-parallel 4 --sequence-parallel --partition-size 0", "bad-sp", 30);
  EXPECT_NE(run.result.status, 0) << run.result.output;
  EXPECT_NE(run.result.output.find("T = 30 positions do not split evenly over --tensor-parallel 4"), std::string::npos)
      << run.result.output;
  EXPECT_NE(run.result.output.find("valid --tensor-parallel for 8 ranks, this model (H4 V256) and T = 30: 2"),
            std::string::npos)
      << run.result.output;
  const TrainRun plain = train(2, 1, "--sequence-parallel --partition-size 0", "bad-sp-plain");
  EXPECT_NE(plain.result.status, 0) << plain.result.output;
  EXPECT_NE(plain.result.output.find("add --tensor-parallel 2 or more"), std::string::npos) << plain.result.output;
}

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
