#include "train/config.hpp"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "base/error.hpp"

namespace mics::train {

namespace {

[[noreturn]] void bad_flag(const std::string& flag, const std::string& message, const std::string& hint) {
  throw Error(ErrorKind::kInvalidArgument, fmt::format("{}: {}", flag, message),
              {.layer = "train", .where = "mics train", .hint = hint});
}

}  // namespace

uint64_t parse_bytes(const std::string& text, const char* flag) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    bad_flag(flag, fmt::format("'{}' is not a size", text), "write bytes, or a number with KiB, MiB, GiB, TiB, KB, MB, GB");
  }
  std::string unit = text.substr(used);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(0, 1);
  double scale = 1;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KiB" || unit == "K") scale = 1024.0;
  else if (unit == "MiB" || unit == "M") scale = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G") scale = 1024.0 * 1024 * 1024;
  else if (unit == "TiB" || unit == "T") scale = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "TB") scale = 1e12;
  else bad_flag(flag, fmt::format("unknown unit '{}' in '{}'", unit, text), "use KiB, MiB, GiB, TiB, KB, MB, GB or plain bytes");
  if (!(value > 0) || !std::isfinite(value)) bad_flag(flag, fmt::format("'{}' must be positive", text), "give a size such as 8GiB");
  return static_cast<uint64_t>(value * scale);
}

void validate(const TrainConfig& c) {
  if (c.device != "cpu" && c.device != "cuda")
    bad_flag("--device", fmt::format("unknown device '{}'", c.device), "use cpu or cuda");
  // The one-GPU and GPU-sharded trainer has no observer of its own; its per-kernel profile is
  // MICS_CUDA_PROFILE=1.
  if (c.device == "cuda" && c.tensor_parallel == 1 && c.pipeline_parallel == 1 && !c.trace.empty())
    bad_flag("--trace", "not built for --device cuda without a mesh",
             "use MICS_CUDA_PROFILE=1 for per-kernel-kind GPU times, or trace a run on --device cpu or a mesh");
  if (c.strategy != "ddp" && c.strategy != "zero3" && c.strategy != "mics")
    bad_flag("--strategy", fmt::format("unknown strategy '{}'", c.strategy), "use ddp, zero3 or mics");
  if (c.partition_size != "auto") {
    char* end = nullptr;
    const long p = std::strtol(c.partition_size.c_str(), &end, 10);
    if (c.partition_size.empty() || *end != '\0' || p < 0)
      bad_flag("--partition-size", fmt::format("'{}' is not a partition size", c.partition_size),
               "give a number of ranks that divides the world size, 'auto', or 0 for the ranks per node");
    if (c.strategy != "mics" && p != 0)
      bad_flag("--partition-size", fmt::format("{} with --strategy {}", c.partition_size, c.strategy),
               "the partition size is fixed by ddp (1) and zero3 (all ranks): use --strategy mics to choose it");
  } else if (c.strategy != "mics") {
    bad_flag("--partition-size", fmt::format("auto with --strategy {}", c.strategy),
             "the partition size is fixed by ddp (1) and zero3 (all ranks): use --strategy mics to choose it");
  }
  if (c.tensor_parallel < 1)
    bad_flag("--tensor-parallel", fmt::format("{} < 1", c.tensor_parallel), "use 1 (off) or a size that divides the heads");
  if (c.pipeline_parallel < 1)
    bad_flag("--pipeline-parallel", fmt::format("{} < 1", c.pipeline_parallel), "use 1 (off) or at most the layers");
  if (c.pipeline_schedule != "1f1b" && c.pipeline_schedule != "gpipe")
    bad_flag("--pipeline-schedule", fmt::format("unknown schedule '{}'", c.pipeline_schedule), "use 1f1b or gpipe");
  if (c.tensor_parallel > 1 || c.pipeline_parallel > 1) {
    const char* flag = c.tensor_parallel > 1 ? "--tensor-parallel" : "--pipeline-parallel";
    if (c.gather_dtype != "f32")
      bad_flag("--gather-dtype", fmt::format("{} with {}", c.gather_dtype, flag),
               "the mesh's data engine gathers fp32 (on the host, also with --device cuda): use --gather-dtype f32");
    if (c.partition_size == "auto") bad_flag(flag, "with --partition-size auto", "give the partition size as a number");
  }
  if (c.sequence_parallel && c.tensor_parallel < 2)
    bad_flag("--sequence-parallel", fmt::format("with --tensor-parallel {}", c.tensor_parallel),
             "sequence parallelism splits the sequence over the tensor ranks: add --tensor-parallel 2 or more");
  if (c.comm_dtype != "f32" && c.comm_dtype != "bf16")
    bad_flag("--comm-dtype", fmt::format("unknown dtype '{}'", c.comm_dtype), "use f32 or bf16");
  if (c.gather_dtype != "f32" && c.gather_dtype != "bf16")
    bad_flag("--gather-dtype", fmt::format("unknown dtype '{}'", c.gather_dtype), "use f32 or bf16");
  if (c.gather_dtype == "bf16" && c.device != "cuda")
    bad_flag("--gather-dtype", "bf16 with --device " + c.device,
             "bf16 parameter gathers are built for --device cuda (the CPU engines gather fp32): use --gather-dtype f32");
  if (c.micro_batch < 1) bad_flag("--micro-batch", fmt::format("{} < 1", c.micro_batch), "use 1 or more sequences");
  if (c.seq_len < 0) bad_flag("--seq-len", fmt::format("{} < 0", c.seq_len), "use 0 for the model's context or a positive length");
  if (c.grad_accum < 1) bad_flag("--grad-accum", fmt::format("{} < 1", c.grad_accum), "use 1 or more micro-steps");
  if (c.steps < 1) bad_flag("--steps", fmt::format("{} < 1", c.steps), "use 1 or more optimizer steps");
  if (!(c.lr > 0) || !std::isfinite(c.lr)) bad_flag("--lr", fmt::format("{} is not a positive learning rate", c.lr), "try 3e-3 for tiny, 6e-4 for gpt2-124m");
  if (c.warmup < -1) bad_flag("--warmup", fmt::format("{} < 0", c.warmup), "use 0 or more steps, or -1 for 5% of the steps");
  if (c.warmup > c.steps) bad_flag("--warmup", fmt::format("{} warm-up steps > {} steps", c.warmup, c.steps), "warm up for fewer steps than the run");
  if (!(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1)) bad_flag("--min-lr-ratio", fmt::format("{} outside [0, 1]", c.min_lr_ratio), "use e.g. 0.1");
  if (!(c.weight_decay >= 0) || !std::isfinite(c.weight_decay)) bad_flag("--weight-decay", fmt::format("{} < 0", c.weight_decay), "use 0 or a small positive value such as 0.1");
  if (!(c.clip >= 0) || !std::isfinite(c.clip)) bad_flag("--clip", fmt::format("{} < 0", c.clip), "use 0 to disable clipping, or e.g. 1.0");
  if (c.eval_every < 0) bad_flag("--eval-every", fmt::format("{} < 0", c.eval_every), "use 0 for only at the end");
  if (c.eval_batches < 1) bad_flag("--eval-batches", fmt::format("{} < 1", c.eval_batches), "use 1 or more");
  if (c.samples < 0) bad_flag("--samples", fmt::format("{} < 0", c.samples), "use 0 to skip the continuations");
  if (c.sample_tokens < 1) bad_flag("--sample-tokens", fmt::format("{} < 1", c.sample_tokens), "use 1 or more");
  if (c.log_every < 1) bad_flag("--log-every", fmt::format("{} < 1", c.log_every), "use 1 or more");
  if (c.threads < 0) bad_flag("--threads", fmt::format("{} < 0", c.threads), "use 0 for automatic");
  if (c.ckpt_every < 0) bad_flag("--ckpt-every", fmt::format("{} < 0", c.ckpt_every), "use 0 for no checkpoints, or N > 0");
  if (c.ckpt_every > 0 && c.out.empty()) bad_flag("--ckpt-every", "given without --out", "checkpoints go to --out DIR/step-XXXXXXXX: give --out");
  if (c.keep < 1) bad_flag("--keep", fmt::format("{} < 1", c.keep), "keep at least the newest checkpoint");
  if (c.resume.empty()) bad_flag("--resume", "empty", "use none, auto or a checkpoint path");
  if (c.resume == "auto" && c.out.empty()) bad_flag("--resume", "auto without --out", "auto looks for checkpoints in --out: give --out");
  if (c.resume != "none" && !c.init_from.empty())
    bad_flag("--init-from", fmt::format("with --resume {}", c.resume), "--init-from starts a new run from a model; --resume continues one: give one of them");
  if (!c.memory_budget.empty()) parse_bytes(c.memory_budget, "--memory-budget");
  if (!c.eval_data.empty() && c.data.empty())
    bad_flag("--eval-data", "given without --data", "the embedded corpus has its own validation shard: drop --eval-data, or give --data too");
}

std::string describe(const TrainConfig& c) {
  return fmt::format(
      "model={} recompute={} strategy={} partition_size={} memory_budget={} comm_dtype={} gather_dtype={} micro_batch={} "
      "seq_len={} grad_accum={} steps={} lr={} warmup={} min_lr_ratio={} weight_decay={} clip={} seed={} "
      "data={} eval_data={} eval_every={} eval_batches={} samples={} sample_tokens={} tensor_parallel={} "
      "pipeline_parallel={} sequence_parallel={} pipeline_schedule={} mesh_order={}",
      c.model, c.recompute, c.strategy, c.partition_size, c.memory_budget.empty() ? "auto" : c.memory_budget,
      c.comm_dtype, c.gather_dtype, c.micro_batch, c.seq_len, c.grad_accum, c.steps, c.lr, c.warmup, c.min_lr_ratio,
      c.weight_decay, c.clip, c.seed, c.data.empty() ? "<embedded>" : c.data, c.eval_data, c.eval_every,
      c.eval_batches, c.samples, c.sample_tokens, c.tensor_parallel, c.pipeline_parallel, c.sequence_parallel,
      c.pipeline_schedule,
      c.mesh_order);
}

}  // namespace mics::train
