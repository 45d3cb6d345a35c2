#pragma once
// GPT-2 on one CUDA device: the model of gpt.hpp (same units, same flat parameter layout, same
// GELU, LayerNorm eps, tied head, mean cross-entropy) with bf16 compute, fp32 master weights,
// fp32 gradients and fp32 accumulation, and AdamW on the device over the flat parameters.
//
// Buffers on the device: params (fp32 master, every unit concatenated in unit order), their
// bf16 copy (what the GEMMs read), grads (fp32, same layout), the AdamW moments; activations of
// one micro-batch of B x T tokens: the residual stream fp32, the rest bf16.
// A step: zero_grads(); forward_backward() per micro-batch; step() (norm, clip, AdamW).
// Sharded (CudaOptions::shard_pad > 0, several ranks): none of the full arrays; per-unit
// working buffers filled by the engine's gathers and drained by its reduce-scatters (the
// UnitSource of shard/cuda_engine.hpp), the engine steps.
//
// No CUDA headers here; without a CUDA build (MICS_HAVE_CUDA) only device_unavailable_reason()
// exists, and it says so.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/gpt.hpp"
#include "shard/cuda_engine.hpp"

namespace mics::model::cuda {

// "" when a CUDA device can be used; else why not ("no CUDA device: ...", "built without CUDA").
std::string device_unavailable_reason();

struct CudaOptions {
  bool fused_epilogues = true;  // cuBLASLt bias / GELU epilogues
  bool flash_attention = true;  // fused attention (false: batched GEMMs + a softmax kernel)
  // With flash_attention: cuDNN's fused SDPA (cudnn_attention.hpp) where the build has cuDNN and
  // it has an engine for the shape; else, or when false, mics' own kernels (flash.cu).
  bool cudnn_attention = true;
  bool cudnn_deterministic = false;  // cuDNN's backward with dQ as its own pass (no atomics)
  bool profile = false;         // time each kind of kernel with CUDA events (take_profile)
  int flash_bwd_stages = 1;     // fused attention backward: 1, or 2 (Q/dO double-buffered; no faster on the H200)
  int flash_bwd_min_blocks = 3;  // 3: the backward kernel built for 3 blocks per SM (head size 64; measured
                                 // 5.81 vs 6.09 ms per step on the H200); 0: no register cap (2 blocks)
  int flash_bwd_key_tile = 64;   // 128: backward blocks of 128 keys over 8 warps (head size 64)
  // Activation recompute: every block keeps only its input ([B*T, C], the stream's dtype); one shared set of a
  // block's activations is refilled by rerunning the block's forward before its backward (one
  // more forward per step, ~1/3 more FLOPs).
  bool recompute = false;
  int gemm_autotune = 0;  // > 1: time that many cuBLASLt candidates per GEMM shape (Blas::set_autotune)
  // The backward's weight-gradient GEMMs (with their own cuBLASLt workspace) and the qkv/fc bias
  // sums on a second stream, overlapping the main stream's next kernels; events order every
  // buffer both streams touch.
  // One GPU only (not sharded), and not with recompute (its shared activations) or profile
  // (whose per-kind times are main-stream events): there the GEMMs run in line.
  bool overlap_weight_grads = true;
  // The residual stream's gradient (dL/dx between the blocks' backward passes) kept in bf16 only,
  // as llm.c keeps it: each LayerNorm backward adds to it in fp32 and rounds (the weight-gradient
  // GEMMs read a bf16 copy either way). LayerNorm backward then moves 10 bytes per element instead
  // of 16 (1.79 -> 1.42 ms per step, +1.8% tokens/s for GPT-2 124M B16 on an H200). false: fp32.
  bool residual_grad_bf16 = true;
  // The residual stream itself (the blocks' inputs and the proj/fcproj GEMMs' sums) in bf16, as
  // llm.c keeps it: each residual GEMM adds its product and bias to the bf16 stream in fp32 and
  // rounds once; LayerNorm reads bf16 and takes its statistics in fp32. Half the stream's bytes
  // in LayerNorm forward and backward and in the residual GEMMs' C and D (+1.9% tokens/s for
  // GPT-2 124M B16 on an H200; the eval loss after 200 steps 1.2846 against 1.2879 in fp32).
  // false: fp32, as PyTorch's autocast keeps it.
  bool residual_bf16 = true;
  // One GPU, not profiling: each micro-batch's forward and backward replayed as a CUDA graph
  // (captured at the second call of each kind; gpt_cuda.cu). It saves the launches (~400 per
  // micro-batch for GPT-2 124M): what counts at small micro-batches, where the host's launches
  // take longer than the kernels.
  bool cuda_graphs = true;
  // For the sharded engine (shard/cuda_engine.hpp), > 0: no full parameter, gradient or
  // moment arrays; per-unit working buffers instead, each unit padded to a multiple of
  // shard_pad floats (the engine's world size), filled and drained through set_unit_source():
  // unit 0 (fp32 + bf16 params, fp32 grads), two block slots (fp32 + bf16 params: the current
  // block and the prefetched one) and two block gradient buffers (one being reduce-scattered
  // while the next block's backward writes the other).
  int shard_pad = 0;
};

struct PhaseTime {
  std::string name;
  double ms = 0;  // summed since the last take_profile()
  int calls = 0;
};

struct AdamWConfig {
  float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f, clip = 1.0f;
};

struct StepResult {
  double loss = 0;       // mean over the micro-batches since zero_grads()
  double grad_norm = 0;  // of the averaged gradient, before clipping
  bool skipped = false;  // non-finite norm: no update
};

class CudaGpt {
 public:
  CudaGpt(const GptConfig& config, int batch, int seq_len, CudaOptions options = {});
  ~CudaGpt();
  CudaGpt(const CudaGpt&) = delete;
  CudaGpt& operator=(const CudaGpt&) = delete;

  size_t num_params() const;       // floats in the flat array
  size_t unit_offset(int unit) const;  // where unit u starts in it
  void upload_params(const float* host);  // num_params() floats; also makes the bf16 copy
  void download_params(float* host) const;
  void download_grads(float* host) const;
  // For checkpoints: AdamW's moments (num_params() floats each; the one-GPU model's own optimizer
  // states) uploaded; and elements [offset, offset + count) of the flat params (which 0), exp_avg
  // (1) or exp_avg_sq (2) copied to host memory.
  void upload_moments(const float* exp_avg, const float* exp_avg_sq);
  void download_state(int which, size_t offset, size_t count, float* host) const;

  void zero_grads();  // and the loss accumulator
  // One micro-batch (host token arrays of B*T): forward, loss, backward; gradients added.
  void forward_backward(const int32_t* inputs, const int32_t* targets);
  // Mean loss of one micro-batch, no gradients (waits for the device).
  float forward_loss(const int32_t* inputs, const int32_t* targets);
  // The mean loss over the micro-batches since zero_grads() (waits for the device).
  float accumulated_loss();
  // Global norm, clip, AdamW with step number t (1-based) over micro_steps accumulated
  // micro-batches; waits for the device and returns the loss and norm.
  StepResult step(const AdamWConfig& config, int64_t t, int micro_steps);

  // For the sharded engine (shard_pad > 0): where each unit's parameters come from and its
  // gradients go (set before the first forward), the model's stream (a cudaStream_t), the
  // bytes of the working buffers, and the norm and AdamW kernels bound to this model's scratch.
  void set_unit_source(shard::UnitSource source);
  void* stream();
  uint64_t working_buffer_bytes() const;
  shard::DeviceOptimizer device_optimizer();

  std::vector<PhaseTime> take_profile();
  uint64_t allocated_bytes() const;  // what this model allocated (params, states, activations)
  std::string attention_kind() const;  // "flash (fused)" or "GEMM + softmax"
  // "on: N captured ...", "on (... none yet)" or "off (why)".
  std::string graph_status() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The device's name, memory and the peak dense bf16 rate the MFU is quoted against.
struct DeviceSummary {
  std::string name;
  uint64_t memory_bytes = 0;
  double peak_bf16_tflops = 0;  // 989 for H100/H200 SXM (the datasheet's dense figure)
  std::string peak_note;
};
DeviceSummary device_summary();
// Peak device memory in use (cudaMemGetInfo's total - free, sampled when called).
uint64_t device_memory_in_use();

}  // namespace mics::model::cuda
