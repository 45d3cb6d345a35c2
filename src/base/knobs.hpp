#pragma once
// Environment knobs: typed, read once (at the first call of knobs(), which the binary makes
// at start-up so a bad value fails before any work), and printable with their source.
// Identity variables (rank, world size, rendezvous address) are not knobs: bootstrap/ reads
// them. Add a knob by adding a field here and a row in knobs.cpp's table.
#include <cstdint>
#include <string>
#include <vector>

namespace mics {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

struct Knobs {
  double timeout_s = 300;                // MICS_TIMEOUT_S: deadline of every operation
  LogLevel log_level = LogLevel::kInfo;  // MICS_LOG_LEVEL
  int64_t spin_rounds = -1;              // MICS_SPIN_ROUNDS: polls before yielding (-1: auto)
  int64_t yield_us = 20000;              // MICS_YIELD_US: idle time spent yielding before sleeping
  int64_t max_sleep_us = 200;            // MICS_MAX_SLEEP_US: longest nap of an idle waiter
  std::string intra_provider = "shm";    // MICS_INTRA_PROVIDER: same-node rail provider
  std::string inter_provider;            // FI_PROVIDER: other-node rail provider (empty: auto)
  std::string algo;                      // MICS_ALGO: force a collective algorithm (empty: auto)
  int64_t small_msg_bytes = 65536;       // MICS_SMALL_MSG_BYTES: latency algorithm up to here
  int64_t chunk_bytes = 1 << 20;         // MICS_CHUNK_BYTES: pipelining chunk of reducing rings
  int64_t gather_chunk_bytes = 64 << 20; // MICS_GATHER_CHUNK_BYTES: largest ring all-gather message
  std::string gpu_comm = "auto";         // MICS_GPU_COMM: GPU collectives: auto, nccl or fabric
  std::string data_dir;                  // MICS_DATA_DIR: the embedded corpus' cache (empty: ~/.cache/mics)
  int64_t trace_max_events = 200000;     // MICS_TRACE_MAX_EVENTS: events kept per rank by --trace
  double watchdog_grace_s = 5;           // MICS_WATCHDOG_GRACE_S: end a rank stuck this long past a deadline (0: off)
  int64_t debug_hang_rank = -1;          // MICS_DEBUG_HANG_RANK: tests only: this rank hangs in a collective
  int64_t debug_slow_rank = -1;          // MICS_DEBUG_SLOW_RANK: this rank sleeps before each step
  int64_t debug_slow_ms = 0;             // MICS_DEBUG_SLOW_MS: for this long (ms)
  int64_t debug_ckpt_write_delay_ms = 0; // MICS_DEBUG_CKPT_WRITE_DELAY_MS: tests only: slow checkpoint writes
  // The CUDA path's switches (read by train/, applied in model/cuda's CudaOptions).
  bool cuda_profile = false;             // MICS_CUDA_PROFILE: per-kernel-kind CUDA event times per step
  bool cuda_flash = true;                // MICS_CUDA_FLASH: fused attention (0: GEMMs + softmax)
  bool cuda_cudnn_attention = true;      // MICS_CUDA_CUDNN_ATTENTION: cuDNN's SDPA (0: mics' kernels)
  bool cuda_cudnn_deterministic = false;  // MICS_CUDA_CUDNN_DETERMINISTIC: dQ without atomics
  bool cuda_epilogues = true;            // MICS_CUDA_EPILOGUES: cuBLASLt bias/GELU epilogues
  int64_t cuda_flash_bwd_stages = 1;     // MICS_CUDA_FLASH_BWD_STAGES: 1 or 2
  int64_t cuda_flash_bwd_min_blocks = 3; // MICS_CUDA_FLASH_BWD_MINBLOCKS: 3 or 0 (no cap)
  int64_t cuda_flash_bwd_keys = 64;      // MICS_CUDA_FLASH_BWD_KEYS: 64 or 128
  int64_t cuda_gemm_tune = 8;            // MICS_CUDA_GEMM_TUNE: cuBLASLt candidates timed per GEMM shape
  bool cuda_overlap_wgrad = true;        // MICS_CUDA_OVERLAP_WGRAD: weight-grad GEMMs, bias sums on a 2nd stream
  bool cuda_residual_grad_bf16 = true;   // MICS_CUDA_RESIDUAL_GRAD: the residual stream's gradient in bf16 (or fp32)
  bool cuda_residual_bf16 = true;        // MICS_CUDA_RESIDUAL: the residual stream in bf16 (or fp32)
  bool cuda_graphs = true;               // MICS_CUDA_GRAPHS: one GPU's micro-batches replayed as CUDA graphs
};

// One row per knob for printing: name, value as text, whether the env set it, help.
struct KnobRow {
  std::string name;
  std::string value;
  bool from_env;
  std::string help;
};

// Reads every knob from the environment on first use and caches the result. Throws
// mics::Error (kConfig) naming the variable and the expected form on a bad value.
const Knobs& knobs();
std::vector<KnobRow> knob_rows();
// Multi-line "name=value (default|env) help" text for start-up banners and `mics doctor`.
std::string describe_knobs(bool only_set = false);

// For tests: re-read the environment.
void reload_knobs_for_testing();

}  // namespace mics
