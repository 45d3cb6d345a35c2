// `mics train`: the GPT workload under ddp, zero3 or mics (train/trainer.hpp does the work).
// Run it as every rank of a job (mics launch, srun, mpirun), or give -n N [--nodes K] and it
// starts the N local ranks itself through `mics launch`.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/error.hpp"
#include "model/gpt.hpp"
#include "tools/commands.hpp"
#include "train/config.hpp"
#include "train/trainer.hpp"

namespace mics::tools {

namespace {

struct TrainFlags {
  train::TrainConfig config;
  int nproc = 0;
  int nodes = 1;
  std::vector<std::string> argv;  // this process' arguments, for the -n re-launch
  std::string config_file;
};

bool inside_a_job() {
  for (const char* var : {"MICS_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"})
    if (const char* v = std::getenv(var); v && *v) return true;
  return false;
}

std::string self_executable() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0)
    throw Error(ErrorKind::kIo, "cannot read /proc/self/exe", {.layer = "train", .where = "mics train -n", .hint = "run the ranks with mics launch"});
  path[n] = '\0';
  return path;
}

// `mics train -n N --nodes K ARGS` becomes `mics launch -n N --nodes K -- mics train ARGS`.
[[noreturn]] void relaunch(const TrainFlags& f) {
  const std::string self = self_executable();
  std::vector<std::string> args = {self, "launch", "-n", std::to_string(f.nproc), "--nodes", std::to_string(f.nodes), "--",
                                   self, "train"};
  bool after_train = false;
  for (size_t i = 0; i < f.argv.size(); ++i) {
    const std::string& a = f.argv[i];
    if (!after_train) {
      after_train = a == "train";
      continue;
    }
    if (a == "-n" || a == "--nproc" || a == "--nodes") {
      ++i;  // and its value
      continue;
    }
    if (a.rfind("--nproc=", 0) == 0 || a.rfind("--nodes=", 0) == 0 || (a.rfind("-n", 0) == 0 && a.size() > 2 && a[2] != '-'))
      continue;
    args.push_back(a);
  }
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  ::execv(self.c_str(), cargs.data());
  throw Error(ErrorKind::kIo, fmt::format("cannot start {}: {}", self, errno_text(errno)),
              {.layer = "train", .where = "mics train -n", .hint = "run the ranks with mics launch"});
}

std::string trim(std::string s) {
  const auto space = [](unsigned char ch) { return std::isspace(ch) != 0; };
  while (!s.empty() && space(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && space(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

// Settings from --config: `name = value` lines (TOML's simple form: "strings", numbers,
// true/false; # comments; a [train] header is allowed), where name is a flag's long name
// (dashes or underscores). A setting applies only when its flag was not given.
void apply_config_file(CLI::App& sub, const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("--config {}: cannot read it: {}", path, errno_text(errno)),
                {.layer = "train", .where = "mics train", .hint = "give the path of an existing settings file"});
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    auto bad = [&](const std::string& what, const std::string& hint) {
      throw Error(ErrorKind::kInvalidArgument, fmt::format("--config {}:{}: {}", path, number, what),
                  {.layer = "train", .where = "mics train", .hint = hint});
    };
    bool quoted = false;  // a '#' outside quotes starts a comment
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '"') quoted = !quoted;
      if (line[i] == '#' && !quoted) {
        line.resize(i);
        break;
      }
    }
    line = trim(line);
    if (line.empty() || line == "[train]") continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos) bad(fmt::format("'{}' is not 'name = value'", line), "write one setting per line, e.g. steps = 200");
    std::string name = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    std::replace(name.begin(), name.end(), '_', '-');
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    CLI::Option* opt = name == "config" || name == "nproc" || name == "nodes" ? nullptr : sub.get_option_no_throw("--" + name);
    if (!opt) bad(fmt::format("unknown setting '{}'", name), "settings are the long flag names of mics train --help (model, strategy, steps, ...)");
    if (opt->count() > 0) continue;  // the command line wins
    try {
      opt->add_result(value);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      bad(fmt::format("{} = {}: {}", name, value, e.what()), "see mics train --help for the values it takes");
    }
  }
}

}  // namespace

Runner add_train_command(CLI::App& app, int argc, char** argv) {
  auto f = std::make_shared<TrainFlags>();
  f->argv.assign(argv, argv + argc);
  train::TrainConfig& c = f->config;
  CLI::App* sub = app.add_subcommand("train", "train a GPT model with ddp, zero3 or mics sharding (every rank runs this)");
  sub->add_option("--config", f->config_file,
                  "a file of settings, one 'flag-name = value' per line (TOML style); flags given here override it");
  const std::string presets = [] {
    std::string s;
    for (const auto& p : model::GptConfig::preset_names()) s += (s.empty() ? "" : ", ") + p;
    return s;
  }();
  sub->add_option("--model", c.model, "a preset (" + presets + ") or a free size like L4H4C128V256T128")->capture_default_str();
  sub->add_option("--device", c.device, "cpu, or cuda (one GPU, bf16 compute with fp32 master weights)")->capture_default_str();
  sub->add_flag("--recompute", c.recompute, "recompute each block's activations in the backward (memory for time)");
  sub->add_option("--strategy", c.strategy, "ddp, zero3 or mics")->capture_default_str();
  sub->add_option("--partition-size", c.partition_size, "mics: ranks per partition group, 'auto' (smallest that fits the memory budget) or 0 (the ranks per node)")->capture_default_str();
  sub->add_option("--tensor-parallel", c.tensor_parallel, "t: Megatron-style tensor parallel ranks (divides the heads and the vocabulary)")->capture_default_str();
  sub->add_option("--pipeline-parallel", c.pipeline_parallel, "s: pipeline stages of contiguous layers (at most the layers)")->capture_default_str();
  sub->add_flag("--sequence-parallel", c.sequence_parallel, "with --tensor-parallel t: split the LayerNorm regions' activations along the sequence over the t ranks (T divisible by t)");
  sub->add_option("--pipeline-schedule", c.pipeline_schedule, "1f1b or gpipe")->capture_default_str();
  sub->add_option("--mesh-order", c.mesh_order, "rank placement, fastest-varying first: a permutation of t, p, s, r")->capture_default_str();
  sub->add_option("--memory-budget", c.memory_budget, "bytes per rank, e.g. 8GiB (default: 90% of the free memory / ranks on this host)");
  sub->add_option("--comm-dtype", c.comm_dtype, "dtype of the gradient reduce-scatter: f32 or bf16")->capture_default_str();
  sub->add_option("--gather-dtype", c.gather_dtype,
                  "dtype of the parameter all-gathers with --device cuda and several ranks: f32 (the master weights) or bf16 "
                  "(half the bytes, as FSDP's param_dtype; LayerNorm weights and biases then arrive bf16-rounded)")
      ->capture_default_str();
  sub->add_option("--micro-batch", c.micro_batch, "sequences per rank and micro-step")->capture_default_str();
  sub->add_option("--seq-len", c.seq_len, "tokens per sequence (0: the model's context)")->capture_default_str();
  sub->add_option("--grad-accum", c.grad_accum, "micro-steps per optimizer step (S)")->capture_default_str();
  sub->add_option("--steps", c.steps, "optimizer steps")->capture_default_str();
  sub->add_option("--lr", c.lr, "peak learning rate (linear warm-up, cosine decay)")->capture_default_str();
  sub->add_option("--warmup", c.warmup, "warm-up steps (-1: 5% of the steps)")->capture_default_str();
  sub->add_option("--min-lr-ratio", c.min_lr_ratio, "the cosine ends at lr * this")->capture_default_str();
  sub->add_option("--weight-decay", c.weight_decay, "AdamW's decoupled weight decay")->capture_default_str();
  sub->add_option("--clip", c.clip, "global gradient-norm clipping (0: off)")->capture_default_str();
  sub->add_option("--seed", c.seed, "initialisation and data order")->capture_default_str();
  sub->add_option("--data", c.data, "token shards (glob, comma-separated globs); default: the embedded synthetic corpus");
  sub->add_option("--eval-data", c.eval_data, "validation shards (default: --data with 'train' replaced by 'val')");
  sub->add_option("--eval-every", c.eval_every, "evaluate every K steps (0: only at the end)")->capture_default_str();
  sub->add_option("--eval-batches", c.eval_batches, "micro-batches per rank in an evaluation")->capture_default_str();
  sub->add_option("--out", c.out, "run directory (metrics.jsonl is written there)");
  sub->add_option("--metrics", c.metrics, "JSON lines file of per-step records and the summary");
  sub->add_option("--trace", c.trace, "Chrome trace JSON per rank: FILE gets the rank inserted (trace.json -> trace.rank0.json, or FILE with {rank})");
  sub->add_option("--samples", c.samples, "continuations printed at the end (0: none)")->capture_default_str();
  sub->add_option("--sample-tokens", c.sample_tokens, "tokens per continuation")->capture_default_str();
  sub->add_option("--log-every", c.log_every, "print a step line every K steps")->capture_default_str();
  sub->add_option("--threads", c.threads, "compute threads per rank (0: cores / ranks on this host)")->capture_default_str();
  sub->add_option("--ckpt-every", c.ckpt_every, "save a checkpoint every N steps into --out/step-XXXXXXXX (0: never)")->capture_default_str();
  sub->add_option("--keep", c.keep, "committed checkpoints to keep (older ones are deleted after a newer one commits)")->capture_default_str();
  sub->add_flag("--ckpt-sync", c.ckpt_sync, "blocking checkpoint saves (default: snapshot, then write in the background)");
  sub->add_option("--resume", c.resume, "none, auto (the newest checkpoint under --out that verifies) or a checkpoint path")->capture_default_str();
  sub->add_option("--init-from", c.init_from, "start from a Hugging Face GPT-2 directory (config.json + model.safetensors)");
  sub->add_option("-n,--nproc", f->nproc, "start N local ranks (through mics launch) instead of being one rank")->check(CLI::Range(1, 4096));
  sub->add_option("--nodes", f->nodes, "with -n: emulate K nodes of N/K ranks")->check(CLI::Range(1, 4096));
  sub->footer(
      "Examples:\n"
      "  mics train -n 4 --nodes 2 --strategy mics --partition-size 2\n"
      "  mics train -n 8 --nodes 2 --tensor-parallel 2 --pipeline-parallel 2 --partition-size 2\n"
      "  mics train -n 8 --nodes 2 --tensor-parallel 4 --sequence-parallel --partition-size 2\n"
      "  mics launch -n 8 --nodes 2 -- mics train --model gpt2-124m --strategy zero3 --data 'shards/*_train_*.bin'\n"
      "  srun -N 2 --ntasks-per-node 8 mics train --strategy mics --partition-size 8   (MICS_MASTER_ADDR/PORT set)");
  return [f, sub]() -> int {
    if (!f->config_file.empty()) apply_config_file(*sub, f->config_file);
    if (f->nproc > 0 && !inside_a_job()) {
      if (f->nproc % f->nodes != 0)
        throw Error(ErrorKind::kInvalidArgument, fmt::format("-n {} ranks do not split into --nodes {}", f->nproc, f->nodes),
                    {.layer = "train", .where = "mics train", .hint = "give a number of ranks that --nodes divides"});
      train::preflight(f->config, f->nproc, f->nproc / f->nodes, f->nproc);  // one clear error, before any rank starts
      relaunch(*f);
    }
    return train::run_training(f->config);
  };
}

}  // namespace mics::tools
