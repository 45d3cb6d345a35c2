#include "base/knobs.hpp"

#include <atomic>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"

namespace mics {
namespace {

struct KnobSpec {
  const char* name;
  const char* help;
  std::function<void(Knobs&, const std::string&)> parse;
  std::function<std::string(const Knobs&)> show;
};

[[noreturn]] void bad_value(const char* name, const std::string& value, const char* expected) {
  throw Error(ErrorKind::kConfig, fmt::format("{}='{}' is not valid", name, value),
              {.layer = "base",
               .where = "reading environment knobs",
               .hint = fmt::format("set {} to {}, or unset it for the default", name, expected)});
}

int64_t parse_int(const char* name, const std::string& v, int64_t lo, int64_t hi) {
  auto parsed = parse_int64(v);
  if (!parsed || *parsed < lo || *parsed > hi)
    bad_value(name, v, fmt::format("an integer in [{}, {}]", lo, hi).c_str());
  return *parsed;
}

double parse_double(const char* name, const std::string& v, double lo, double hi) {
  auto parsed = parse_f64(v);
  if (!parsed || *parsed < lo || *parsed > hi)
    bad_value(name, v, fmt::format("a number in [{}, {}]", lo, hi).c_str());
  return *parsed;
}

bool parse_switch(const char* name, const std::string& v) {
  if (v == "1") return true;
  if (v == "0") return false;
  bad_value(name, v, "1 or 0");
}

// A dtype choice between bf16 (field true) and fp32.
KnobSpec bf16_or_fp32(const char* name, const char* help, bool Knobs::*field) {
  return {name, help,
          [name, field](Knobs& k, const std::string& v) {
            if (v != "bf16" && v != "fp32") bad_value(name, v, "bf16 or fp32");
            k.*field = v == "bf16";
          },
          [field](const Knobs& k) { return std::string(k.*field ? "bf16" : "fp32"); }};
}

const std::vector<KnobSpec>& specs() {
  static const std::vector<KnobSpec> table = {
      {"MICS_TIMEOUT_S", "deadline in seconds of every collective, connect and rendezvous step",
       [](Knobs& k, const std::string& v) {
         k.timeout_s = parse_double("MICS_TIMEOUT_S", v, 0.1, 1e7);
       },
       [](const Knobs& k) { return fmt::format("{}", k.timeout_s); }},
      {"MICS_LOG_LEVEL", "error, warn, info or debug",
       [](Knobs& k, const std::string& v) {
         if (v == "error")
           k.log_level = LogLevel::kError;
         else if (v == "warn")
           k.log_level = LogLevel::kWarn;
         else if (v == "info")
           k.log_level = LogLevel::kInfo;
         else if (v == "debug")
           k.log_level = LogLevel::kDebug;
         else
           bad_value("MICS_LOG_LEVEL", v, "one of error, warn, info, debug");
       },
       [](const Knobs& k) {
         static const char* names[] = {"error", "warn", "info", "debug"};
         return std::string(names[static_cast<int>(k.log_level)]);
       }},
      {"MICS_SPIN_ROUNDS",
       "polls of an idle wait before it yields the core (auto: 2000, 0 when oversubscribed)",
       [](Knobs& k, const std::string& v) {
         k.spin_rounds = v == "auto" ? -1 : parse_int("MICS_SPIN_ROUNDS", v, 0, 1 << 30);
       },
       [](const Knobs& k) {
         return k.spin_rounds < 0 ? std::string("auto") : fmt::format("{}", k.spin_rounds);
       }},
      {"MICS_YIELD_US", "microseconds an idle wait yields the core (sched_yield) before it sleeps",
       [](Knobs& k, const std::string& v) {
         k.yield_us = parse_int("MICS_YIELD_US", v, 0, int64_t{1} << 40);
       },
       [](const Knobs& k) { return fmt::format("{}", k.yield_us); }},
      {"MICS_MAX_SLEEP_US", "longest sleep of an idle wait, microseconds",
       [](Knobs& k, const std::string& v) {
         k.max_sleep_us = parse_int("MICS_MAX_SLEEP_US", v, 1, 1000000);
       },
       [](const Knobs& k) { return fmt::format("{}", k.max_sleep_us); }},
      {"MICS_INTRA_PROVIDER", "libfabric provider of the same-node rail",
       [](Knobs& k, const std::string& v) { k.intra_provider = v; },
       [](const Knobs& k) { return k.intra_provider; }},
      {"FI_PROVIDER",
       "libfabric provider of the other-node rail (unset: efa, verbs;ofi_rxm, tcp;ofi_rxm)",
       [](Knobs& k, const std::string& v) { k.inter_provider = v; },
       [](const Knobs& k) {
         return k.inter_provider.empty() ? std::string("(auto)") : k.inter_provider;
       }},
      {"MICS_ALGO",
       "force a collective algorithm: ring, rd (recursive doubling), hier, hd (all-reduce: "
       "halving-doubling; the ring for the other operations), or auto",
       [](Knobs& k, const std::string& v) {
         if (v != "auto" && v != "ring" && v != "rd" && v != "hier" && v != "hd")
           bad_value("MICS_ALGO", v, "one of auto, ring, rd, hier, hd");
         k.algo = v == "auto" ? "" : v;
       },
       [](const Knobs& k) { return k.algo.empty() ? std::string("auto") : k.algo; }},
      {"MICS_GPU_COMM",
       "GPU collectives: nccl, fabric (device buffers staged through pinned host memory over "
       "the libfabric rails), or auto (nccl when every rank has a GPU of its own, else fabric)",
       [](Knobs& k, const std::string& v) {
         if (v != "auto" && v != "nccl" && v != "fabric")
           bad_value("MICS_GPU_COMM", v, "one of auto, nccl, fabric");
         k.gpu_comm = v;
       },
       [](const Knobs& k) { return k.gpu_comm; }},
      {"MICS_CUDA_PROFILE", "1: time every kernel kind with CUDA events and print the breakdown (adds a little time)",
       [](Knobs& k, const std::string& v) { k.cuda_profile = parse_switch("MICS_CUDA_PROFILE", v); },
       [](const Knobs& k) { return std::string(k.cuda_profile ? "1" : "0"); }},
      {"MICS_CUDA_FLASH", "1: fused causal attention; 0: attention through GEMMs and a softmax kernel",
       [](Knobs& k, const std::string& v) { k.cuda_flash = parse_switch("MICS_CUDA_FLASH", v); },
       [](const Knobs& k) { return std::string(k.cuda_flash ? "1" : "0"); }},
      {"MICS_CUDA_CUDNN_ATTENTION",
       "1: the fused attention is cuDNN's SDPA where the build has cuDNN and an engine for the shape; "
       "0: mics' own kernels",
       [](Knobs& k, const std::string& v) { k.cuda_cudnn_attention = parse_switch("MICS_CUDA_CUDNN_ATTENTION", v); },
       [](const Knobs& k) { return std::string(k.cuda_cudnn_attention ? "1" : "0"); }},
      {"MICS_CUDA_CUDNN_DETERMINISTIC",
       "1: cuDNN's attention backward computes dQ in its own pass (no atomics: the same gradients every run); "
       "0: fp32 atomics",
       [](Knobs& k, const std::string& v) {
         k.cuda_cudnn_deterministic = parse_switch("MICS_CUDA_CUDNN_DETERMINISTIC", v);
       },
       [](const Knobs& k) { return std::string(k.cuda_cudnn_deterministic ? "1" : "0"); }},
      {"MICS_CUDA_EPILOGUES", "1: bias, GELU and residual fused into cuBLASLt epilogues; 0: separate kernels",
       [](Knobs& k, const std::string& v) { k.cuda_epilogues = parse_switch("MICS_CUDA_EPILOGUES", v); },
       [](const Knobs& k) { return std::string(k.cuda_epilogues ? "1" : "0"); }},
      {"MICS_CUDA_FLASH_BWD_STAGES", "fused attention backward: 1, or 2 (Q/dO double-buffered)",
       [](Knobs& k, const std::string& v) {
         k.cuda_flash_bwd_stages = parse_int("MICS_CUDA_FLASH_BWD_STAGES", v, 1, 2);
       },
       [](const Knobs& k) { return fmt::format("{}", k.cuda_flash_bwd_stages); }},
      {"MICS_CUDA_FLASH_BWD_MINBLOCKS", "3: fused attention backward with registers capped for 3 blocks per SM; 0: no cap",
       [](Knobs& k, const std::string& v) {
         const int64_t blocks = parse_int("MICS_CUDA_FLASH_BWD_MINBLOCKS", v, 0, 3);
         if (blocks != 0 && blocks != 3) bad_value("MICS_CUDA_FLASH_BWD_MINBLOCKS", v, "0 or 3");
         k.cuda_flash_bwd_min_blocks = blocks;
       },
       [](const Knobs& k) { return fmt::format("{}", k.cuda_flash_bwd_min_blocks); }},
      {"MICS_CUDA_FLASH_BWD_KEYS", "keys per block of the fused attention backward: 64 or 128 (8 warps)",
       [](Knobs& k, const std::string& v) {
         const int64_t keys = parse_int("MICS_CUDA_FLASH_BWD_KEYS", v, 64, 128);
         if (keys != 64 && keys != 128) bad_value("MICS_CUDA_FLASH_BWD_KEYS", v, "64 or 128");
         k.cuda_flash_bwd_keys = keys;
       },
       [](const Knobs& k) { return fmt::format("{}", k.cuda_flash_bwd_keys); }},
      {"MICS_CUDA_GEMM_TUNE", "cuBLASLt algorithms timed per GEMM shape at its first call, the fastest kept (0: the heuristic's first)",
       [](Knobs& k, const std::string& v) { k.cuda_gemm_tune = parse_int("MICS_CUDA_GEMM_TUNE", v, 0, 16); },
       [](const Knobs& k) { return fmt::format("{}", k.cuda_gemm_tune); }},
      {"MICS_CUDA_OVERLAP_WGRAD",
       "1: one GPU's weight-gradient GEMMs (and qkv/fc bias sums) run on a second stream, overlapping the next kernels "
       "(not with --recompute or MICS_CUDA_PROFILE=1); 0: one stream",
       [](Knobs& k, const std::string& v) { k.cuda_overlap_wgrad = parse_switch("MICS_CUDA_OVERLAP_WGRAD", v); },
       [](const Knobs& k) { return std::string(k.cuda_overlap_wgrad ? "1" : "0"); }},
      bf16_or_fp32("MICS_CUDA_RESIDUAL_GRAD",
                   "the residual stream's gradient between the blocks' backward passes: bf16 (as llm.c keeps it; "
                   "LayerNorm backward then moves 10 bytes per element instead of 16) or fp32",
                   &Knobs::cuda_residual_grad_bf16),
      bf16_or_fp32("MICS_CUDA_RESIDUAL",
                   "the residual stream between the blocks (their inputs, the proj/fcproj GEMMs' sums): bf16 (as "
                   "llm.c keeps it; half its bytes in LayerNorm and the residual GEMMs) or fp32 (as PyTorch's "
                   "autocast keeps it)",
                   &Knobs::cuda_residual_bf16),
      {"MICS_CUDA_GRAPHS",
       "1: one GPU's micro-batches (forward and backward) replayed as CUDA graphs from each kind's second call "
       "(not sharded, not with MICS_CUDA_PROFILE=1); 0: every kernel launched by the host",
       [](Knobs& k, const std::string& v) { k.cuda_graphs = parse_switch("MICS_CUDA_GRAPHS", v); },
       [](const Knobs& k) { return std::string(k.cuda_graphs ? "1" : "0"); }},
      {"MICS_SMALL_MSG_BYTES", "messages up to this size use the latency algorithm",
       [](Knobs& k, const std::string& v) {
         k.small_msg_bytes = parse_int("MICS_SMALL_MSG_BYTES", v, 0, int64_t{1} << 40);
       },
       [](const Knobs& k) { return fmt::format("{}", k.small_msg_bytes); }},
      {"MICS_GATHER_CHUNK_BYTES", "largest message of the ring all-gather (no reduction to pipeline)",
       [](Knobs& k, const std::string& v) { k.gather_chunk_bytes = parse_int("MICS_GATHER_CHUNK_BYTES", v, 4096, int64_t{1} << 34); },
       [](const Knobs& k) { return fmt::format("{}", k.gather_chunk_bytes); }},
      {"MICS_CHUNK_BYTES", "pipelining chunk of the reducing ring algorithms and the chain broadcast",
       [](Knobs& k, const std::string& v) {
         k.chunk_bytes = parse_int("MICS_CHUNK_BYTES", v, 4096, int64_t{1} << 34);
       },
       [](const Knobs& k) { return fmt::format("{}", k.chunk_bytes); }},
      {"MICS_DATA_DIR", "where mics train keeps the embedded synthetic corpus (generated on first use)",
       [](Knobs& k, const std::string& v) { k.data_dir = v; },
       [](const Knobs& k) { return k.data_dir.empty() ? std::string("(~/.cache/mics)") : k.data_dir; }},
      {"MICS_TRACE_MAX_EVENTS", "events a rank keeps for --trace (the first steps and a window of the last ones)",
       [](Knobs& k, const std::string& v) { k.trace_max_events = parse_int("MICS_TRACE_MAX_EVENTS", v, 16, int64_t{1} << 32); },
       [](const Knobs& k) { return fmt::format("{}", k.trace_max_events); }},
      {"MICS_WATCHDOG_GRACE_S",
       "a rank whose operation is this long past MICS_TIMEOUT_S is stuck inside the transport: it reports "
       "the operation and exits (0: off)",
       [](Knobs& k, const std::string& v) { k.watchdog_grace_s = parse_double("MICS_WATCHDOG_GRACE_S", v, 0, 1e7); },
       [](const Knobs& k) { return fmt::format("{}", k.watchdog_grace_s); }},
      {"MICS_DEBUG_HANG_RANK",
       "debug: this rank stops inside its next collective as a transport call that never returns would "
       "(tests the watchdog; -1: none)",
       [](Knobs& k, const std::string& v) { k.debug_hang_rank = parse_int("MICS_DEBUG_HANG_RANK", v, -1, 1 << 30); },
       [](const Knobs& k) { return fmt::format("{}", k.debug_hang_rank); }},
      {"MICS_DEBUG_SLOW_RANK", "debug: this rank sleeps MICS_DEBUG_SLOW_MS before each step (a deliberate straggler; -1: none)",
       [](Knobs& k, const std::string& v) { k.debug_slow_rank = parse_int("MICS_DEBUG_SLOW_RANK", v, -1, 1 << 30); },
       [](const Knobs& k) { return fmt::format("{}", k.debug_slow_rank); }},
      {"MICS_DEBUG_SLOW_MS", "debug: milliseconds MICS_DEBUG_SLOW_RANK sleeps before each step",
       [](Knobs& k, const std::string& v) { k.debug_slow_ms = parse_int("MICS_DEBUG_SLOW_MS", v, 0, 3600000); },
       [](const Knobs& k) { return fmt::format("{}", k.debug_slow_ms); }},
      {"MICS_DEBUG_CKPT_WRITE_DELAY_MS",
       "tests only: checkpoint files are written in 64 KiB pieces with this sleep after each (0: off)",
       [](Knobs& k, const std::string& v) {
         k.debug_ckpt_write_delay_ms = parse_int("MICS_DEBUG_CKPT_WRITE_DELAY_MS", v, 0, 10000);
       },
       [](const Knobs& k) { return fmt::format("{}", k.debug_ckpt_write_delay_ms); }},
  };
  return table;
}

struct Loaded {
  Knobs values;
  std::vector<bool> from_env;
};

Loaded load() {
  Loaded loaded;
  for (const auto& spec : specs()) {
    const char* raw = std::getenv(spec.name);
    loaded.from_env.push_back(raw != nullptr && *raw != '\0');
    if (raw && *raw) spec.parse(loaded.values, raw);
  }
  return loaded;
}

std::mutex g_mutex;
std::unique_ptr<Loaded> g_loaded;
std::atomic<const Loaded*> g_current{nullptr};  // read on every idle-wait step: no lock

const Loaded& loaded() {
  if (const Loaded* current = g_current.load(std::memory_order_acquire)) return *current;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_loaded) {
    g_loaded = std::make_unique<Loaded>(load());
    g_current.store(g_loaded.get(), std::memory_order_release);
  }
  return *g_loaded;
}

}  // namespace

const Knobs& knobs() {
  return loaded().values;
}

std::vector<KnobRow> knob_rows() {
  const Loaded& l = loaded();
  std::vector<KnobRow> rows;
  for (size_t i = 0; i < specs().size(); ++i)
    rows.push_back({specs()[i].name, specs()[i].show(l.values), l.from_env[i], specs()[i].help});
  return rows;
}

std::string describe_knobs(bool only_set) {
  std::string out;
  for (const auto& row : knob_rows()) {
    if (only_set && !row.from_env) continue;
    out += fmt::format("  {:<22} = {:<14} ({}) {}\n", row.name, row.value,
                       row.from_env ? "env" : "default", row.help);
  }
  return out;
}

void reload_knobs_for_testing() {
  std::lock_guard<std::mutex> lock(g_mutex);
  // The previous table is kept alive: a concurrent reader may still hold it (tests only).
  static std::vector<std::unique_ptr<Loaded>> retired;
  if (g_loaded) retired.push_back(std::move(g_loaded));
  g_loaded = std::make_unique<Loaded>(load());
  g_current.store(g_loaded.get(), std::memory_order_release);
}

}  // namespace mics
