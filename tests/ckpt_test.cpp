// Checkpoints: the file format and its corruptions (io/checkpoint.hpp), bit-identical resume,
// resharding across ddp/zero3/mics and 1/2/4 ranks, and the Hugging Face export round trip.
// (Kills during saves and disk errors: ckpt_fault_test.sh.)
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "process_util.hpp"

namespace {

namespace fs = std::filesystem;
using mics::io::CheckpointReader;

const std::string& scratch() {
  static const std::string dir = [] {
    std::string d = fmt::format("{}/mics-ckpt-test-{}", fs::temp_directory_path().string(), ::getpid());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// Two writers, two tensors, chunks interleaved over the files.
std::string write_small(const std::string& name) {
  const std::string dir = scratch() + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<float> a(1000), b(37);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.5f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = -static_cast<float>(i);
  mics::io::write_shard_file(dir, "rank-00000.bin", {{"a", 1000, 0, 600, a.data()}, {"b", 37, 20, 17, b.data() + 20}});
  mics::io::write_shard_file(dir, "rank-00001.bin", {{"b", 37, 0, 20, b.data()}, {"a", 1000, 600, 400, a.data() + 600}});
  mics::io::commit_manifest(dir, {"rank-00000.bin", "rank-00001.bin"}, 7, {{"step", 7}}, {{"name", "test"}});
  return dir;
}

void flip_byte(const std::string& path, long offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c;
  f.get(c);
  f.seekp(offset);
  f.put(static_cast<char>(c ^ 0x01));
}

TEST(CkptFormat, RoundTripReadsAnyRange) {
  const std::string dir = write_small("roundtrip");
  const CheckpointReader r(dir);
  EXPECT_EQ(r.step(), 7u);
  EXPECT_TRUE(r.verify().empty());
  std::vector<float> out(300);
  r.read("a", 450, 300, out.data());  // spans both files
  for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], static_cast<float>(450 + i) * 0.5f);
  const auto b = r.read_all("b");
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], -static_cast<float>(i));
  EXPECT_EQ(mics::io::list_checkpoints(scratch()).size(), 0u);  // not step-* names
}

TEST(CkptFormat, DigestCatchesEveryFlippedByte) {
  std::vector<unsigned char> data(1031);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 7);
  const uint64_t d0 = mics::io::digest64(data.data(), data.size());
  for (size_t i = 0; i < data.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      data[i] ^= static_cast<unsigned char>(1 << bit);
      ASSERT_NE(mics::io::digest64(data.data(), data.size()), d0) << i << " " << bit;
      data[i] ^= static_cast<unsigned char>(1 << bit);
    }
}

TEST(CkptFormat, FlippedByteNamesFileAndChunk) {
  const std::string dir = write_small("flip");
  flip_byte(dir + "/rank-00001.bin", 40);  // inside chunk 0 of b (the file's first 80 bytes)
  const CheckpointReader r(dir);
  const auto problems = r.verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("digest mismatch in rank-00001.bin chunk 0 of b"), std::string::npos) << problems[0];
  std::vector<float> out(5);
  EXPECT_THROW(r.read("b", 0, 5, out.data()), mics::Error);
  EXPECT_NO_THROW(r.read("a", 0, 5, out.data()));  // other chunks still read
}

TEST(CkptFormat, MissingManifestIsNoCheckpoint) {
  const std::string dir = write_small("nomanifest");
  fs::remove(dir + "/manifest.json");
  try {
    CheckpointReader r(dir);
    FAIL() << "opened a checkpoint without a manifest";
  } catch (const mics::Error& e) {
    EXPECT_NE(e.message().find("not a committed checkpoint"), std::string::npos) << e.message();
  }
}

TEST(CkptFormat, MissingAndTruncatedFiles) {
  std::string dir = write_small("missing");
  fs::remove(dir + "/rank-00001.bin");
  try {
    CheckpointReader r(dir);
    FAIL() << "opened a checkpoint with a missing file";
  } catch (const mics::Error& e) {
    EXPECT_NE(e.message().find("rank-00001.bin is missing"), std::string::npos) << e.message();
  }
  dir = write_small("truncated");
  fs::resize_file(dir + "/rank-00000.bin", 100);
  try {
    CheckpointReader r(dir);
    FAIL() << "opened a checkpoint with a truncated file";
  } catch (const mics::Error& e) {
    EXPECT_NE(e.message().find("rank-00000.bin has 100 bytes"), std::string::npos) << e.message();
  }
}

// --- mics train ------------------------------------------------------------------------------

const std::string kCommon = "--seq-len 32 --samples 0 --eval-batches 1 --seed 3 --micro-batch 1";

struct TrainRun {
  mics::testing::RunResult result;
  std::vector<double> losses;
};

TrainRun train(const std::string& args, const std::string& tag) {
  const std::string metrics = fmt::format("{}/{}.jsonl", scratch(), tag);
  fs::remove(metrics);
  const std::string model = args.find("--model") == std::string::npos ? "--model tiny" : "";
  TrainRun run{mics::testing::run_command(fmt::format("MICS_TIMEOUT_S=60 MICS_DATA_DIR={}/data {} train {} {} {} --metrics {}", scratch(),
                                                 MICS_BINARY, model, kCommon, args, metrics)),
          {}};
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["event"] == "step") run.losses.push_back(j["loss"].get<double>());
  }
  return run;
}

TEST(CkptTrain, ResumeIsBitIdentical) {
  const std::string a = scratch() + "/resume_a", b = scratch() + "/resume_b";
  // (Independent runs go side by side: they are mostly process start-up.)
  auto plain_run = std::async(std::launch::async, [] { return train("-n 2 --grad-accum 2 --steps 6", "plain"); });
  const TrainRun straight = train(fmt::format("-n 2 --grad-accum 2 --steps 6 --ckpt-every 3 --out {}", a), "straight");
  const TrainRun plain = plain_run.get();
  ASSERT_EQ(straight.result.status, 0) << straight.result.output;
  ASSERT_EQ(straight.losses.size(), 6u);
  EXPECT_EQ(plain.losses, straight.losses) << "saving changed the run";
  // Resume from step 3 of the same run directory: steps 4..6 give exactly the same losses, and
  // the save of step 6 finds step-00000006 committed and keeps it as it is (not rewritten).
  const auto slurp = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const auto inode = [](const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<long>(st.st_ino) : -1L;
  };
  const std::string six = a + "/step-00000006";
  const std::string manifest6 = slurp(six + "/manifest.json");
  const long shard6 = inode(six + "/rank-00000.bin");
  ASSERT_FALSE(manifest6.empty());
  // A different global batch is an error (one rank in this process: the check comes first).
  auto bad_run = std::async(std::launch::async, [&] {
    return train(fmt::format("--grad-accum 1 --steps 8 --resume {}/step-00000003 --out {}", a, b), "badbatch");
  });
  const TrainRun older = train(fmt::format("-n 2 --grad-accum 2 --steps 6 --ckpt-every 3 --resume {}/step-00000003 --out {}", a, a), "older");
  ASSERT_EQ(older.result.status, 0) << older.result.output;
  EXPECT_NE(older.result.output.find(six + " already holds a committed checkpoint of this step"), std::string::npos)
      << older.result.output;
  ASSERT_EQ(older.losses.size(), 3u) << older.result.output;
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(older.losses[i], straight.losses[3 + i]) << "step " << 4 + i;  // exactly
  EXPECT_EQ(slurp(six + "/manifest.json"), manifest6);
  EXPECT_EQ(inode(six + "/rank-00000.bin"), shard6) << "the committed checkpoint was rewritten";
  EXPECT_TRUE(CheckpointReader(six).verify().empty());
  // Without its manifest the directory is leftovers of an unfinished save: replaced.
  fs::remove(six + "/manifest.json");
  std::ofstream(six + "/rank-00000.bin.partial") << "junk";
  const TrainRun replace = train(fmt::format("-n 2 --grad-accum 2 --steps 6 --ckpt-every 3 --resume {}/step-00000003 --out {}", a, a), "replace");
  ASSERT_EQ(replace.result.status, 0) << replace.result.output;
  EXPECT_NE(replace.result.output.find("replacing " + six + ", the leftovers of an unfinished save"), std::string::npos)
      << replace.result.output;
  EXPECT_FALSE(fs::exists(six + "/rank-00000.bin.partial"));
  EXPECT_TRUE(CheckpointReader(six).verify().empty());
  const TrainRun bad = bad_run.get();
  EXPECT_NE(bad.result.status, 0);
  EXPECT_NE(bad.result.output.find("global batch of 4 sequences"), std::string::npos) << bad.result.output;
  // --resume auto in the same run directory continues from the newest (step 6: nothing left).
  const TrainRun again = train(fmt::format("-n 2 --grad-accum 2 --steps 8 --ckpt-every 3 --resume auto --out {}", a), "auto");
  ASSERT_EQ(again.result.status, 0) << again.result.output;
  EXPECT_NE(again.result.output.find("resumed from " + a + "/step-00000006"), std::string::npos) << again.result.output;
  EXPECT_EQ(again.losses.size(), 2u);
}

void expect_same_state(const std::string& x, const std::string& y, bool exact) {
  const CheckpointReader rx(x), ry(y);
  ASSERT_EQ(rx.tensors().size(), ry.tensors().size());
  for (const auto& t : rx.tensors()) {
    const auto vx = rx.read_all(t.name), vy = ry.read_all(t.name);
    ASSERT_EQ(vx.size(), vy.size()) << t.name;
    for (size_t i = 0; i < vx.size(); ++i) {
      if (exact) ASSERT_EQ(vx[i], vy[i]) << t.name << "[" << i << "]";
      else ASSERT_NEAR(vx[i], vy[i], 1e-4 * std::abs(vx[i]) + 1e-6) << t.name << "[" << i << "]";
    }
  }
  EXPECT_EQ(rx.manifest()["training"]["adam_steps"], ry.manifest()["training"]["adam_steps"]);
  EXPECT_EQ(rx.manifest()["training"]["sampler_position"], ry.manifest()["training"]["sampler_position"]);
}

TEST(CkptTrain, ReshardAcrossStrategiesAndWorldSizes) {
  const std::string x = scratch() + "/reshard_src";
  const TrainRun src = train(fmt::format("-n 4 --strategy mics --partition-size 2 --steps 4 --ckpt-every 3 --out {}", x), "reshard_src");
  ASSERT_EQ(src.result.status, 0) << src.result.output;
  ASSERT_EQ(src.losses.size(), 4u);
  struct Layout { std::string args, tag; };
  const std::vector<Layout> layouts = {Layout{"--strategy ddp --grad-accum 4", "ddp1"},
                                       Layout{"-n 2 --strategy zero3 --grad-accum 2", "zero3_2"},
                                       Layout{"-n 4 --strategy zero3", "zero3_4"}};
  // Per layout: "load" loads step 3 and saves it again straight away (the same state, bit for
  // bit); "next" trains one more step (the loss equals the source run's to fp32 rounding, and
  // so does the state). The runs are independent: the three layouts run side by side.
  const auto run_all = [&](const std::string& what, int steps) {
    std::vector<std::future<TrainRun>> runs;
    for (const Layout& l : layouts)
      runs.push_back(std::async(std::launch::async, [&, l] {
        return train(fmt::format("{} --steps {} --ckpt-every 100 --resume {}/step-00000003 --out {}/reshard_{}_{}", l.args,
                                 steps, x, scratch(), l.tag, what),
                     l.tag + "_" + what);
      }));
    std::vector<TrainRun> out;
    for (auto& r : runs) out.push_back(r.get());
    return out;
  };
  const std::vector<TrainRun> load = run_all("load", 3);
  const std::vector<TrainRun> next = run_all("next", 4);
  for (size_t i = 0; i < layouts.size(); ++i) {
    const Layout& l = layouts[i];
    SCOPED_TRACE(l.tag);
    ASSERT_EQ(load[i].result.status, 0) << load[i].result.output;
    expect_same_state(x + "/step-00000003", scratch() + "/reshard_" + l.tag + "_load/step-00000003", true);
    ASSERT_EQ(next[i].result.status, 0) << next[i].result.output;
    ASSERT_EQ(next[i].losses.size(), 1u);
    EXPECT_NEAR(next[i].losses[0], src.losses[3], 1e-5 * src.losses[3]);
    expect_same_state(x + "/step-00000004", scratch() + "/reshard_" + l.tag + "_next/step-00000004", false);
  }
}

TEST(CkptTrain, ExportAndInitFromRoundTrip) {
  const std::string x = scratch() + "/export_src", e1 = scratch() + "/export_hf", e16 = scratch() + "/export_bf16";
  const TrainRun src = train(fmt::format("-n 2 --strategy zero3 --grad-accum 2 --steps 3 --ckpt-every 3 --out {}", x), "export_src");
  ASSERT_EQ(src.result.status, 0) << src.result.output;
  auto r = mics::testing::run_command(fmt::format("{} ckpt export {} --out {}", MICS_BINARY, x, e1));
  ASSERT_EQ(r.status, 0) << r.output;
  r = mics::testing::run_command(fmt::format("{} ckpt export {}/step-00000003 --out {} --dtype bf16", MICS_BINARY, x, e16));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto cfg = nlohmann::json::parse(std::ifstream(e1 + "/config.json"));
  EXPECT_EQ(cfg["model_type"], "gpt2");
  EXPECT_EQ(cfg["n_embd"], 64);
  const auto t32 = mics::io::read_safetensors(e1 + "/model.safetensors");
  const auto t16 = mics::io::read_safetensors(e16 + "/model.safetensors");
  EXPECT_EQ(t32.size(), 4u + 2 * 12);
  const auto& attn = t32.at("transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(attn.shape, (std::vector<int64_t>{64, 192}));  // Conv1D: [in, out]
  // Our qkv_w [3C, C] row 5, column 2 is HF's [2, 5]; block unit offset of qkv_w is 2C.
  const CheckpointReader rx(x + "/step-00000003");
  const auto block0 = rx.read_all("block.0.param");
  EXPECT_EQ(attn.data[2 * 192 + 5], block0[128 + 5 * 64 + 2]);
  EXPECT_EQ(t16.at("transformer.h.0.attn.c_attn.weight").dtype, "BF16");
  for (size_t i = 0; i < attn.data.size(); ++i)
    ASSERT_NEAR(t16.at("transformer.h.0.attn.c_attn.weight").data[i], attn.data[i], 1e-2 * std::abs(attn.data[i]) + 1e-30);
  // --init-from the export, one step at a negligible learning rate, export again: the same
  // parameters (an update of ~1e-30 does not change an fp32 value of this size).
  const std::string y = scratch() + "/export_init", e2 = scratch() + "/export_hf2";
  const TrainRun init = train(fmt::format("-n 2 --strategy mics --grad-accum 2 --steps 1 --lr 1e-30 --ckpt-every 1 --init-from {} --out {}", e1, y), "init");
  ASSERT_EQ(init.result.status, 0) << init.result.output;
  r = mics::testing::run_command(fmt::format("{} ckpt export {} --out {}", MICS_BINARY, y, e2));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto back = mics::io::read_safetensors(e2 + "/model.safetensors");
  for (const auto& [name, t] : t32)
    for (size_t i = 0; i < t.data.size(); ++i) ASSERT_NEAR(back.at(name).data[i], t.data[i], 1e-20) << name << "[" << i << "]";
  // A model of another size is refused with the size it needs.
  const TrainRun wrong = train(fmt::format("--model L1H4C64V256T64 --steps 1 --init-from {}", e1), "init_wrong");
  EXPECT_NE(wrong.result.status, 0);
  EXPECT_NE(wrong.result.output.find("--model L2H4C64V256T64"), std::string::npos) << wrong.result.output;
}

}  // namespace
