#pragma once
// What `mics train` runs: every setting in one struct, filled from flags (and an optional
// config file that the flags override, tools/train.cpp), checked as a whole by validate()
// before anything is written.
#include <cstdint>
#include <string>

namespace mics::train {

struct TrainConfig {
  // model
  std::string model = "tiny";  // a preset or a free size (model/gpt.hpp)
  bool recompute = false;      // activation recomputation per block
  std::string device = "cpu";  // cpu | cuda (cuda: one rank on one GPU for now)
  // parallelism
  std::string strategy = "mics";       // ddp | zero3 | mics
  std::string partition_size = "0";    // mics: P, "auto", or 0 = the ranks per node
  std::string memory_budget;           // per rank, e.g. "8GiB"; empty: free memory / local ranks
  std::string comm_dtype = "f32";      // gradient reduce-scatter dtype: f32 | bf16
  std::string gather_dtype = "f32";    // parameter all-gather dtype (--device cuda): f32 | bf16
  int tensor_parallel = 1;             // t (topo/mesh.hpp); t > 1 or s > 1: train/mesh_trainer.cpp
  int pipeline_parallel = 1;           // s
  bool sequence_parallel = false;      // t > 1: LayerNorm regions split along the sequence (model/gpt_tp.hpp)
  std::string pipeline_schedule = "1f1b";  // 1f1b | gpipe
  std::string mesh_order = "tpsr";     // mesh placement, fastest-varying dimension first
  // batch and schedule
  int micro_batch = 8;   // sequences per rank and micro-step
  int seq_len = 0;       // T; 0: the model's context length
  int grad_accum = 1;    // S
  int steps = 200;
  float lr = 3e-3f;      // peak learning rate
  int warmup = -1;       // linear warm-up steps; -1: 5% of the steps
  float min_lr_ratio = 0.1f;  // cosine decays to lr * min_lr_ratio at the last step
  float weight_decay = 0.0f;
  float clip = 1.0f;     // global gradient-norm clipping; 0 disables
  uint64_t seed = 1;     // parameters and data order
  // data
  std::string data;       // shard glob(s); empty: the embedded synthetic corpus
  std::string eval_data;  // empty: --data with "train" replaced by "val"
  int eval_every = 0;     // 0: only at the end
  int eval_batches = 8;   // micro-batches per rank for an evaluation
  // output
  std::string out;         // run directory (metrics.jsonl goes there unless --metrics)
  std::string metrics;     // JSON lines file
  int samples = 2;         // continuations printed at the end (greedy, then temperature 0.8)
  int sample_tokens = 48;
  int log_every = 1;       // step lines (or progress-bar refreshes) every K steps
  int threads = 0;         // compute threads per rank; 0: cores / ranks on this host
  // checkpoints (train/checkpoint.hpp)
  int ckpt_every = 0;          // save every N steps into --out/step-XXXXXXXX (0: never)
  int keep = 2;                // committed checkpoints kept
  bool ckpt_sync = false;      // blocking saves instead of background writes
  std::string resume = "none"; // none | auto (newest good one under --out) | PATH
  std::string init_from;       // a Hugging Face GPT-2 directory to start from
  std::string trace;       // Chrome trace per rank (the rank goes into the name, obs/trace.hpp)
};

// Throws mics::Error(kInvalidArgument) naming the flag and the valid values.
void validate(const TrainConfig& config);

// "8GiB", "512MiB", "1e9" -> bytes; throws naming the flag on anything else.
uint64_t parse_bytes(const std::string& text, const char* flag);

// The config as one line of text: every rank must run the same (comm::Runtime checks it).
std::string describe(const TrainConfig& config);

}  // namespace mics::train
