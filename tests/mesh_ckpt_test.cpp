// Checkpoints of the mesh trainer (train/checkpoint.hpp's logical layout): the tensor slices'
// placement in the one-process model (model/gpt_tp.hpp tp_unit_pieces), strided chunks in the
// file format (io/checkpoint.hpp, version 2), and end to end through `mics train`:
//   - a t2 p2 r2 mesh resumed on the same mesh gives the uninterrupted run's losses exactly;
//   - a t2 s2 p2 checkpoint loads into plain mics p=2 on 4 ranks and into a t4 p2 mesh, a plain
//     zero3 checkpoint into a t2 s2 p2 mesh: loading and saving again gives the same state bit
//     for bit, and the next steps' losses equal the source run's within 1e-5 relative (the fp32
//     bound of tests/mesh_test.cpp: only the order of additions differs);
//   - samples: a mesh prints trainer.cpp's greedy continuation of the one-process run;
//   - --init-from a Hugging Face export into a mesh gives back the exported parameters;
//   - a checkpoint of another model, a corrupted rank file: the existing clear errors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <numeric>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "model/gpt.hpp"
#include "model/gpt_tp.hpp"
#include "train_run.hpp"

namespace {

namespace fs = std::filesystem;
using mics::io::CheckpointReader;
using mics::model::TpUnit;
using mics::model::UnitPiece;

// --- placement -----------------------------------------------------------------------------------

// Copies a slice unit out of a full logical unit through its pieces.
std::vector<float> through_pieces(const std::vector<UnitPiece>& pieces, const std::vector<float>& full, size_t numel) {
  std::vector<float> out(numel, NAN);
  for (const UnitPiece& p : pieces)
    for (size_t i = 0; i < p.rows; ++i)
      for (size_t j = 0; j < p.run; ++j) out[p.local + i * p.run + j] = full[p.offset + i * p.stride + j];
  return out;
}

TEST(MeshCkptLayout, PiecesMatchTheSlicesAndTileTheModel) {
  const mics::model::GptConfig c = mics::model::GptConfig::from_name("L2H4C64V256T64");
  const mics::model::Gpt gpt(c);
  std::vector<float> unit0(gpt.unit_numel(0)), block(gpt.unit_numel(1));
  std::iota(unit0.begin(), unit0.end(), 0.0f);  // distinct values: a wrong placement shows
  std::iota(block.begin(), block.end(), 0.0f);
  for (int t : {1, 2, 4}) {
    SCOPED_TRACE(fmt::format("t={}", t));
    std::vector<int> hits0(unit0.size(), 0), hits_block(block.size(), 0);
    for (int k = 0; k < t; ++k) {
      const mics::model::TpSlice slice{k, t};
      std::vector<float> split(mics::model::tp_split_numel(c, t)), rep(mics::model::tp_rep_numel(c));
      std::vector<float> wte(mics::model::tp_wte_numel(c, t)), wpe(mics::model::tp_wpe_numel(c)), lnf(mics::model::tp_lnf_numel(c));
      mics::model::tp_slice_block(c, slice, block.data(), split.data(), rep.data());
      mics::model::tp_slice_embed(c, slice, unit0.data(), wte.data(), wpe.data(), lnf.data());
      struct Case {
        TpUnit kind;
        const std::vector<float>* want;
        const std::vector<float>* full;
        std::vector<int>* hits;
        bool replicated;
      };
      for (const Case& u : {Case{TpUnit::kSplit, &split, &block, &hits_block, false}, Case{TpUnit::kRep, &rep, &block, &hits_block, true},
                            Case{TpUnit::kWte, &wte, &unit0, &hits0, false}, Case{TpUnit::kWpe, &wpe, &unit0, &hits0, true},
                            Case{TpUnit::kLnf, &lnf, &unit0, &hits0, true}}) {
        const auto pieces = mics::model::tp_unit_pieces(c, slice, u.kind, 1);
        EXPECT_EQ(through_pieces(pieces, *u.full, u.want->size()), *u.want) << static_cast<int>(u.kind);
        for (const UnitPiece& p : pieces) {
          EXPECT_EQ(p.unit, u.kind == TpUnit::kSplit || u.kind == TpUnit::kRep ? 2 : 0);
          if (u.replicated && k > 0) continue;  // held by every tensor rank: counted once
          for (size_t i = 0; i < p.rows; ++i)
            for (size_t j = 0; j < p.run; ++j) ++(*u.hits)[p.offset + i * p.stride + j];
        }
      }
    }
    // Every element of the logical units in exactly one slice's piece.
    EXPECT_EQ(std::count(hits0.begin(), hits0.end(), 1), static_cast<long>(hits0.size()));
    EXPECT_EQ(std::count(hits_block.begin(), hits_block.end(), 1), static_cast<long>(hits_block.size()));
  }
}

// --- strided chunks --------------------------------------------------------------------------------

const std::string& scratch() { return mics::testing::scratch_dir("mics-mesh-ckpt-test"); }

// A 6 x 8 row-major matrix "m": rank 0 writes columns 0..2 of every row as one strided chunk,
// rank 1 columns 3..7 of rows 0..2 (strided) and rows 3..5 contiguous pieces.
std::string write_strided(const std::string& name, uint64_t overlap_run = 3) {
  const std::string dir = scratch() + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<float> m(48);
  std::iota(m.begin(), m.end(), 0.0f);
  std::vector<float> left, right_top;
  for (int r = 0; r < 6; ++r)
    for (int col = 0; col < 8; ++col) {
      if (col < 3) left.push_back(m[static_cast<size_t>(r * 8 + col)]);
      else if (r < 3) right_top.push_back(m[static_cast<size_t>(r * 8 + col)]);
    }
  mics::io::write_shard_file(dir, "rank-00000.bin", {{"m", 48, 0, 6 * overlap_run, left.data(), overlap_run, 8}});
  std::vector<mics::io::WriteChunk> chunks = {{"m", 48, 3, 15, right_top.data(), 5, 8}};
  for (int r = 3; r < 6; ++r) chunks.push_back({"m", 48, static_cast<uint64_t>(r * 8 + 3), 5, m.data() + r * 8 + 3});
  mics::io::write_shard_file(dir, "rank-00001.bin", chunks);
  mics::io::commit_manifest(dir, {"rank-00000.bin", "rank-00001.bin"}, 1, {{"step", 1}}, {{"name", "test"}});
  return dir;
}

TEST(MeshCkptFormat, StridedChunksRoundTrip) {
  const std::string dir = write_strided("strided");
  const CheckpointReader r(dir);
  EXPECT_EQ(r.manifest()["version"], 2);
  EXPECT_TRUE(r.verify().empty());
  const auto all = r.read_all("m");
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<float>(i)) << i;
  // A column slice back (rows 1..4, columns 2..4) through read_runs: one run per row.
  std::vector<float> cols(12);
  std::vector<mics::io::ReadRun> runs;
  for (int row = 1; row < 5; ++row) runs.push_back({static_cast<uint64_t>(row * 8 + 2), 3, cols.data() + (row - 1) * 3});
  r.read_runs("m", runs);
  for (int row = 1; row < 5; ++row)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(cols[static_cast<size_t>((row - 1) * 3 + j)], static_cast<float>(row * 8 + 2 + j));
  // A flipped byte in the strided chunk names it.
  std::fstream f(dir + "/rank-00000.bin", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(10);
  f.put('\x7f');
  f.close();
  const auto problems = CheckpointReader(dir).verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("digest mismatch in rank-00000.bin chunk 0 of m"), std::string::npos) << problems[0];
}

TEST(MeshCkptFormat, OverlappingStridedChunksAreRefused) {
  // Rank 0's rows of 4 columns overlap rank 1's column 3: the commit names the element.
  try {
    write_strided("overlap", 4);
    FAIL() << "committed overlapping chunks";
  } catch (const mics::Error& e) {
    EXPECT_NE(e.message().find("tensor m has overlapping chunks at element 4"), std::string::npos) << e.message();
  }
}

// --- mics train -----------------------------------------------------------------------------------

using mics::testing::TrainRun;

// 16 sequences of 32 tokens per step whatever the layout (data ranks x S x B).
TrainRun train(const std::string& args, const std::string& tag, int samples = 0) {
  const std::string metrics = fmt::format("{}/{}.jsonl", scratch(), tag);
  fs::remove(metrics);
  return mics::testing::run_and_read_metrics(
      fmt::format("MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data {} train {} --seq-len 32 --samples {} --sample-tokens 12 "
                  "--eval-batches 1 --seed 3 --micro-batch 2 {} --metrics {}",
                  scratch(), MICS_BINARY, args.find("--model") == std::string::npos ? "--model tiny" : "", samples, args, metrics),
      metrics);
}

const std::string kT2S2P2 = "-n 8 --nodes 2 --tensor-parallel 2 --pipeline-parallel 2 --strategy mics --partition-size 2 --grad-accum 4";
const std::string kT2P2R2 = "-n 8 --nodes 2 --tensor-parallel 2 --strategy mics --partition-size 2 --grad-accum 2";
const std::string kT4P2 = "-n 8 --nodes 2 --tensor-parallel 4 --strategy mics --partition-size 2 --grad-accum 4";
const std::string kPlainMics4 = "-n 4 --strategy mics --partition-size 2 --grad-accum 2";
const std::string kPlainZero3 = "-n 4 --strategy zero3 --grad-accum 2";

void expect_same_state(const std::string& x, const std::string& y) {
  const CheckpointReader rx(x), ry(y);
  ASSERT_EQ(rx.tensors().size(), ry.tensors().size());
  for (const auto& t : rx.tensors()) {
    const auto vx = rx.read_all(t.name), vy = ry.read_all(t.name);
    ASSERT_EQ(vx.size(), vy.size()) << t.name;
    for (size_t i = 0; i < vx.size(); ++i) ASSERT_EQ(vx[i], vy[i]) << t.name << "[" << i << "] " << x << " vs " << y;
  }
  EXPECT_EQ(rx.manifest()["training"]["adam_steps"], ry.manifest()["training"]["adam_steps"]);
  EXPECT_EQ(rx.manifest()["training"]["sampler_position"], ry.manifest()["training"]["sampler_position"]);
}

TEST(MeshCkptTrain, SameMeshResumeIsBitIdentical) {
  const std::string a = scratch() + "/same_a";
  const TrainRun straight = train(fmt::format("{} --steps 4 --ckpt-every 2 --out {}", kT2P2R2, a), "same_straight");
  ASSERT_EQ(straight.result.status, 0) << straight.result.output;
  ASSERT_EQ(straight.losses.size(), 4u);
  EXPECT_TRUE(CheckpointReader(a + "/step-00000002").verify().empty());
  const TrainRun resumed = train(fmt::format("{} --steps 4 --resume {}/step-00000002 --out {}/same_b", kT2P2R2, a, scratch()), "same_resumed");
  ASSERT_EQ(resumed.result.status, 0) << resumed.result.output;
  EXPECT_NE(resumed.result.output.find("in a mesh r2 p2 s1 t2; this run: 8 ranks in a mesh r2 p2 s1 t2"), std::string::npos)
      << resumed.result.output;
  ASSERT_EQ(resumed.losses.size(), 2u) << resumed.result.output;
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(resumed.losses[i], straight.losses[2 + i]) << "step " << 3 + i;  // exactly
  EXPECT_TRUE(resumed.summary["mesh"]["tensor_matches"].get<bool>()) << resumed.result.output;
  EXPECT_TRUE(resumed.summary["mesh"]["data_matches"].get<bool>()) << resumed.result.output;
}

// Loads `src`'s step 2 into each layout twice, side by side: "load" saves it again at once (the
// same state, bit for bit, whatever the layout), "next" trains steps 3 and 4.
void reshard_into(const std::string& src, const std::vector<double>& src_losses,
                  const std::vector<std::pair<std::string, std::string>>& layouts) {
  std::vector<std::future<TrainRun>> loads, nexts;
  for (const auto& [args, tag] : layouts) {
    loads.push_back(std::async(std::launch::async, [&, args = args, tag = tag] {
      return train(fmt::format("{} --steps 2 --ckpt-every 100 --resume {}/step-00000002 --out {}/{}_load", args, src, scratch(), tag),
                   tag + "_load");
    }));
  }
  std::vector<TrainRun> load_runs;
  for (auto& f : loads) load_runs.push_back(f.get());
  for (const auto& [args, tag] : layouts) {
    nexts.push_back(std::async(std::launch::async, [&, args = args, tag = tag] {
      return train(fmt::format("{} --steps 4 --resume {}/step-00000002 --out {}/{}_next", args, src, scratch(), tag), tag + "_next");
    }));
  }
  for (size_t i = 0; i < layouts.size(); ++i) {
    const std::string& tag = layouts[i].second;
    SCOPED_TRACE(tag);
    ASSERT_EQ(load_runs[i].result.status, 0) << load_runs[i].result.output;
    expect_same_state(src + "/step-00000002", fmt::format("{}/{}_load/step-00000002", scratch(), tag));
    const TrainRun next = nexts[i].get();
    ASSERT_EQ(next.result.status, 0) << next.result.output;
    ASSERT_EQ(next.losses.size(), 2u) << next.result.output;
    for (size_t k = 0; k < 2; ++k) {
      EXPECT_NEAR(next.losses[k], src_losses[2 + k], 1e-5 * src_losses[2 + k]) << "step " << 3 + k;
      fmt::print("{}: step {} loss {:.9g} vs source {:.9g} (relative {:.2e})\n", tag, 3 + k, next.losses[k], src_losses[2 + k],
                 std::abs(next.losses[k] - src_losses[2 + k]) / src_losses[2 + k]);
    }
  }
}

TEST(MeshCkptTrain, MeshCheckpointLoadsIntoPlainAndOtherMeshes) {
  const std::string src = scratch() + "/t2s2p2";
  const TrainRun run = train(fmt::format("{} --steps 4 --ckpt-every 2 --out {}", kT2S2P2, src), "t2s2p2", 2);
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  ASSERT_EQ(run.losses.size(), 4u);
  EXPECT_EQ(CheckpointReader(src + "/step-00000002").manifest()["training"]["mesh"]["t"], 2);
  reshard_into(src, run.losses, {{kPlainMics4, "plain_mics4"}, {kT4P2, "t4p2"}});
}

TEST(MeshCkptTrain, PlainZero3CheckpointLoadsIntoAMesh) {
  const std::string src = scratch() + "/zero3";
  const TrainRun run = train(fmt::format("{} --steps 4 --ckpt-every 2 --out {}", kPlainZero3, src), "zero3");
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  ASSERT_EQ(run.losses.size(), 4u);
  reshard_into(src, run.losses, {{kT2S2P2, "zero3_to_t2s2p2"}});
}

// The greedy continuation (trainer.cpp's first sample row) of a t2 s2 p2 mesh and of the plain
// trainer on 4 ranks: the same tokens (the logits differ only in fp32 rounding).
TEST(MeshCkptTrain, MeshPrintsTheSamples) {
  auto plain_run = std::async(std::launch::async, [] { return train(kPlainMics4 + " --steps 2", "samples_plain", 2); });
  const TrainRun mesh = train(kT2S2P2 + " --steps 2", "samples_mesh", 2);
  const TrainRun plain = plain_run.get();
  ASSERT_EQ(mesh.result.status, 0) << mesh.result.output;
  ASSERT_EQ(plain.result.status, 0) << plain.result.output;
  auto greedy = [](const std::string& out) {
    const size_t at = out.find("[greedy] ");
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at) - at);
  };
  EXPECT_NE(mesh.result.output.find("samples (prompt: the first 8 tokens of a validation sequence)"), std::string::npos)
      << mesh.result.output;
  EXPECT_NE(mesh.result.output.find("[t=0.8] "), std::string::npos) << mesh.result.output;
  EXPECT_FALSE(greedy(mesh.result.output).empty()) << mesh.result.output;
  EXPECT_EQ(greedy(mesh.result.output), greedy(plain.result.output));
  EXPECT_TRUE(mesh.summary["mesh"]["tensor_matches"].get<bool>()) << "sampling traffic leaked into the step figures";
  EXPECT_TRUE(mesh.summary["mesh"]["pipeline_matches"].get<bool>()) << "sampling traffic leaked into the step figures";
}

// A t2 p2 r2 checkpoint exported to Hugging Face's layout, --init-from it on a t2 s2 p2 mesh, one
// step at a negligible learning rate, exported again: the same parameters.
TEST(MeshCkptTrain, InitFromAnExportIntoAMesh) {
  const std::string src = scratch() + "/init_src", hf = scratch() + "/init_hf", dst = scratch() + "/init_dst",
                    hf2 = scratch() + "/init_hf2";
  const TrainRun run = train(fmt::format("{} --steps 1 --ckpt-every 1 --out {}", kT2P2R2, src), "init_src");
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  auto r = mics::testing::run_command(fmt::format("{} ckpt export {} --out {}", MICS_BINARY, src, hf));
  ASSERT_EQ(r.status, 0) << r.output;
  const TrainRun init =
      train(fmt::format("{} --steps 1 --lr 1e-30 --ckpt-every 1 --init-from {} --out {}", kT2S2P2, hf, dst), "init_dst");
  ASSERT_EQ(init.result.status, 0) << init.result.output;
  r = mics::testing::run_command(fmt::format("{} ckpt export {} --out {}", MICS_BINARY, dst, hf2));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto a = mics::io::read_safetensors(hf + "/model.safetensors"), b = mics::io::read_safetensors(hf2 + "/model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a)
    for (size_t i = 0; i < t.data.size(); ++i) ASSERT_NEAR(b.at(name).data[i], t.data[i], 1e-20) << name << "[" << i << "]";
}

TEST(MeshCkptTrain, WrongModelAndCorruptFileAreClearErrors) {
  const std::string src = scratch() + "/errors";
  const TrainRun run = train(fmt::format("{} --steps 1 --ckpt-every 1 --out {}", kT2P2R2, src), "errors_src");
  ASSERT_EQ(run.result.status, 0) << run.result.output;
  auto wrong_run = std::async(std::launch::async, [&] {
    return train(fmt::format("{} --model L1H4C64V256T64 --steps 2 --resume {}/step-00000001", kT2P2R2, src), "errors_model");
  });
  // One flipped byte in rank 3's file: an explicit --resume of it fails naming file and chunk.
  {
    std::fstream f(src + "/step-00000001/rank-00003.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(100);
    char ch = 0;
    f.get(ch);
    f.seekp(100);
    f.put(static_cast<char>(ch ^ 0x10));
  }
  const TrainRun corrupt = train(fmt::format("{} --steps 2 --resume {}/step-00000001", kT4P2, src), "errors_corrupt");
  EXPECT_NE(corrupt.result.status, 0);
  EXPECT_NE(corrupt.result.output.find("digest mismatch in rank-00003.bin"), std::string::npos) << corrupt.result.output;
  EXPECT_NE(corrupt.result.output.find("no usable checkpoint"), std::string::npos) << corrupt.result.output;
  const TrainRun wrong = wrong_run.get();
  EXPECT_NE(wrong.result.status, 0);
  EXPECT_NE(wrong.result.output.find("holds model tiny (L2 H4 C64 V256 T64)"), std::string::npos) << wrong.result.output;
}

}  // namespace
