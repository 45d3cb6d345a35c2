// `mics ckpt inspect|verify|export|eval DIR`: look into, check, convert and evaluate sharded
// checkpoints (io/checkpoint.hpp). DIR is a step directory (step-XXXXXXXX) or a run directory
// holding them.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "model/gpt.hpp"
#include "model/gpt_hf.hpp"
#include "tools/commands.hpp"

namespace mics::tools {

namespace {

namespace fs = std::filesystem;

struct CkptFlags {
  std::string dir, out, dtype = "f32", tokens;
};

bool is_step_dir(const std::string& dir) { return fs::path(dir).filename().string().rfind("step-", 0) == 0 || fs::exists(fs::path(dir) / io::kManifestName); }

std::string newest_committed(const std::string& root) {
  for (const auto& d : io::list_checkpoints(root))
    if (d.committed) return d.path;
  throw Error(ErrorKind::kInvalidArgument, fmt::format("{} holds no committed checkpoint", root),
              {.layer = "io", .where = "mics ckpt", .hint = "give a step-XXXXXXXX directory with a manifest.json"});
}

model::GptConfig model_config(const io::CheckpointReader& r) {
  const auto& md = r.manifest().at("model");
  model::GptConfig g;
  g.layers = md.at("layers");
  g.heads = md.at("heads");
  g.channels = md.at("channels");
  g.vocab = md.at("vocab");
  g.max_seq = md.at("max_seq");
  return g;
}

// Every unit's parameters, whole (digests checked).
std::vector<std::vector<float>> read_params(const io::CheckpointReader& r) {
  std::vector<std::vector<float>> units;
  for (const auto& u : r.manifest().at("model").at("units")) units.push_back(r.read_all(u.at("name").get<std::string>() + ".param"));
  return units;
}

int inspect(const CkptFlags& f) {
  if (!is_step_dir(f.dir)) {
    const auto list = io::list_checkpoints(f.dir);
    fmt::print("{}: {} checkpoint director{}\n", f.dir, list.size(), list.size() == 1 ? "y" : "ies");
    for (const auto& d : list) fmt::print("  {}  {}\n", d.path, d.committed ? "committed" : "NOT committed (no manifest)");
    return 0;
  }
  const io::CheckpointReader r(f.dir);
  const auto& m = r.manifest();
  const auto& t = m.at("training");
  const auto& md = m.at("model");
  fmt::print("checkpoint {}\n", r.dir());
  fmt::print("  step {} | sampler position {} | global batch {} x {} tokens | adam steps {}\n", r.step(),
             t.at("sampler_position").get<uint64_t>(), t.at("global_batch_sequences").get<uint64_t>(), t.at("seq_len").get<int>(),
             t.at("adam_steps").get<int64_t>());
  fmt::print("  written by {} ranks, strategy {} p={} (grad accum {}, micro batch {}), seed {}\n", t.at("world_size").get<int>(),
             t.at("strategy").get<std::string>(), t.at("partition_size").get<int>(), t.at("grad_accum").get<int>(),
             t.at("micro_batch").get<int>(), t.at("seed").get<uint64_t>());
  if (t.contains("mesh"))
    fmt::print("  in a mesh r={} p={} s={} t={} (stored in the logical, one-process layout)\n", t["mesh"].at("r").get<int>(),
               t["mesh"].at("p").get<int>(), t["mesh"].at("s").get<int>(), t["mesh"].at("t").get<int>());
  fmt::print("  schedule: {}\n", t.at("schedule").dump());
  fmt::print("  model {}: L{} H{} C{} V{} T{}\n", md.value("name", "?"), md.at("layers").get<int>(), md.at("heads").get<int>(),
             md.at("channels").get<int>(), md.at("vocab").get<int>(), md.at("max_seq").get<int>());
  uint64_t file_bytes = 0;
  for (const auto& fl : m.at("files")) file_bytes += fl.at("bytes").get<uint64_t>();
  fmt::print("  {} files, {:.1f} MiB; {} tensors (digest {})\n", m.at("files").size(), static_cast<double>(file_bytes) / (1 << 20),
             r.tensors().size(), m.at("digest").get<std::string>());
  for (const auto& fl : m.at("files")) fmt::print("    {}  {} bytes\n", fl.at("name").get<std::string>(), fl.at("bytes").get<uint64_t>());
  for (const auto& tn : r.tensors()) {
    fmt::print("    {:<28} f32 [{}]  {} chunk(s):", tn.name, tn.numel, tn.chunks.size());
    for (const auto& c : tn.chunks) {
      if (c.strided()) fmt::print(" {}+{}x{}/{}@{}", c.offset, c.rows(), c.run, c.stride, c.file);  // rows x run, stride
      else fmt::print(" {}+{}@{}", c.offset, c.length, c.file);
    }
    fmt::print("\n");
  }
  return 0;
}

int verify_one(const std::string& dir) {
  std::unique_ptr<io::CheckpointReader> r;
  try {
    r = std::make_unique<io::CheckpointReader>(dir);
  } catch (const Error& e) {
    fmt::print("FAILED {}: {}\n", dir, e.message());
    return 1;
  }
  const auto problems = r->verify();
  if (problems.empty()) {
    size_t chunks = 0;
    for (const auto& t : r->tensors()) chunks += t.chunks.size();
    fmt::print("OK {}: step {}, {} tensors, {} chunks, {:.1f} MiB, every digest matches\n", dir, r->step(), r->tensors().size(),
               chunks, static_cast<double>(r->total_bytes()) / (1 << 20));
    return 0;
  }
  for (const auto& p : problems) fmt::print("FAILED {}: {}\n", dir, p);
  return 1;
}

int verify(const CkptFlags& f) {
  if (is_step_dir(f.dir)) return verify_one(f.dir);
  int status = 0, committed = 0;
  for (const auto& d : io::list_checkpoints(f.dir)) {
    if (!d.committed) {
      fmt::print("skipped {}: not committed (no manifest: an unfinished or failed save)\n", d.path);
      continue;
    }
    ++committed;
    status |= verify_one(d.path);
  }
  if (committed == 0) {
    fmt::print("FAILED {}: no committed checkpoint\n", f.dir);
    return 1;
  }
  return status;
}

int export_hf(const CkptFlags& f) {
  if (f.dtype != "f32" && f.dtype != "bf16")
    throw Error(ErrorKind::kInvalidArgument, fmt::format("--dtype {}", f.dtype), {.layer = "io", .where = "mics ckpt export", .hint = "use f32 or bf16"});
  const std::string dir = is_step_dir(f.dir) ? f.dir : newest_committed(f.dir);
  const io::CheckpointReader r(dir);
  const model::GptConfig g = model_config(r);
  const auto units = read_params(r);
  std::vector<io::SafeTensorOut> out;
  for (const auto& t : model::gpt2_hf_tensors(g)) out.push_back({t.name, t.hf_shape(), model::to_hf(t, units[static_cast<size_t>(t.unit)].data())});
  std::error_code ec;
  fs::create_directories(f.out, ec);
  if (ec)
    throw Error(ErrorKind::kIo, fmt::format("cannot create {}: {}", f.out, ec.message()), {.layer = "io", .where = "mics ckpt export", .hint = "choose a writable --out"});
  io::write_safetensors(f.out + "/model.safetensors", out, f.dtype == "f32" ? "F32" : "BF16",
                        {{"format", "pt"}, {"source", dir}});
  nlohmann::json cfg = model::gpt2_hf_config(g);
  cfg["torch_dtype"] = f.dtype == "f32" ? "float32" : "bfloat16";
  std::ofstream(f.out + "/config.json") << cfg.dump(2) << "\n";
  fmt::print("exported {} (step {}) to {}: config.json + model.safetensors ({} tensors, {})\n", dir, r.step(), f.out, out.size(),
             f.dtype);
  return 0;
}

// The mean cross-entropy of the checkpoint's model over the sequences of a token file: one
// sequence per line, whitespace-separated token ids, every line the same length n (2 <= n <=
// max_seq + 1); each line predicts its tokens 2..n from the ones before. The forward is the one
// mics trains with (model/gpt.hpp), on the whole parameters, in one process.
int eval_tokens(const CkptFlags& f) {
  const std::string dir = is_step_dir(f.dir) ? f.dir : newest_committed(f.dir);
  const io::CheckpointReader r(dir);
  const model::GptConfig g = model_config(r);
  const auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kInvalidArgument, fmt::format("--tokens {}: {}", f.tokens, what),
                 {.layer = "io", .where = "mics ckpt eval",
                  .hint = fmt::format("one sequence per line, 2 to {} token ids below {} each, all lines equally long",
                                      g.max_seq + 1, g.vocab)});
  };
  std::ifstream in(f.tokens);
  if (!in) throw bad("cannot read it");
  std::vector<std::vector<int64_t>> rows;
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::vector<int64_t> row;
    for (std::string w; words >> w;) {
      size_t used = 0;
      int64_t id = -1;
      try {
        id = std::stoll(w, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != w.size() || id < 0 || id >= g.vocab) throw bad(fmt::format("line {}: '{}' is not a token id", rows.size() + 1, w));
      row.push_back(id);
    }
    if (row.empty()) continue;
    if (row.size() < 2 || row.size() > static_cast<size_t>(g.max_seq) + 1 || (!rows.empty() && row.size() != rows[0].size()))
      throw bad(fmt::format("line {} has {} tokens", rows.size() + 1, row.size()));
    rows.push_back(std::move(row));
  }
  if (rows.empty()) throw bad("no sequences");
  const int B = static_cast<int>(rows.size()), T = static_cast<int>(rows[0].size()) - 1;
  std::vector<int32_t> inputs, targets;
  for (const auto& row : rows)
    for (int t = 0; t < T; ++t) {
      inputs.push_back(static_cast<int32_t>(row[static_cast<size_t>(t)]));
      targets.push_back(static_cast<int32_t>(row[static_cast<size_t>(t) + 1]));
    }
  const auto units = read_params(r);
  const model::Gpt gpt(g);
  std::vector<const float*> ptrs;
  for (const auto& u : units) ptrs.push_back(u.data());
  const float loss = model::gpt_forward_backward(gpt, ptrs, nullptr, inputs.data(), targets.data(), B, T, false);
  fmt::print("{} (step {}): {} sequences x {} predicted tokens: mean cross-entropy {:.9g}\n", dir, r.step(), B, T, loss);
  return 0;
}

}  // namespace

Runner add_ckpt_command(CLI::App& app) {
  auto f = std::make_shared<CkptFlags>();
  CLI::App* sub = app.add_subcommand("ckpt", "inspect, verify and export sharded checkpoints");
  sub->require_subcommand(1);
  CLI::App* ins = sub->add_subcommand("inspect", "what a checkpoint (or a run directory's checkpoints) holds");
  ins->add_option("dir", f->dir, "a step-XXXXXXXX directory or a run directory")->required();
  CLI::App* ver = sub->add_subcommand("verify", "check completeness and every chunk's digest (exit 1 on any failure)");
  ver->add_option("dir", f->dir, "a step-XXXXXXXX directory or a run directory (every committed checkpoint)")->required();
  CLI::App* exp = sub->add_subcommand("export", "write a Hugging Face GPT-2 directory (config.json + model.safetensors)");
  exp->add_option("dir", f->dir, "a step-XXXXXXXX directory or a run directory (its newest committed checkpoint)")->required();
  exp->add_option("--out", f->out, "the model directory to write")->required();
  exp->add_option("--dtype", f->dtype, "f32 or bf16")->capture_default_str();
  CLI::App* ev = sub->add_subcommand("eval", "the model's mean cross-entropy over the sequences of a token file");
  ev->add_option("dir", f->dir, "a step-XXXXXXXX directory or a run directory (its newest committed checkpoint)")->required();
  ev->add_option("--tokens", f->tokens, "text file: one sequence of token ids per line, all lines equally long")->required();
  return [f, ins, ver, exp, ev]() -> int {
    if (ins->parsed()) return inspect(*f);
    if (ver->parsed()) return verify(*f);
    if (exp->parsed()) return export_hf(*f);
    if (ev->parsed()) return eval_tokens(*f);
    return 2;
  };
}

}  // namespace mics::tools
