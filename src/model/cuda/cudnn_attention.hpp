#pragma once
// Causal attention through cuDNN's fused SDPA (flash-attention kernels of cuDNN 9, with
// Hopper wgmma versions), built with cuDNN's backend C API (cudnn_graph.h): no cudnn-frontend.
// The graphs are the fused-attention patterns cuDNN's engines recognise: forward
// S = Q K^T * scale, causal mask, softmax with its log-sum-exp kept as stats, O = P V; backward
// from Q, K, V, O, dO and the stats. dQ either by fp32 atomics into a [B, heads, T, D] buffer
// and a conversion (cuDNN's default for long sequences), or deterministic: dS kept in cuDNN's
// workspace and dQ = dS K as its own pass (what llm.c asks for; no atomics, so a step's
// gradients are the same from run to run).
//
// The layout is the fused kernels' (FlashLayout in kernels.hpp): q, k, v, dq, dk, dv rows at
// (b * T + t) * ld_qkv + h * D, y and dy rows at (b * T + t) * ld_o + h * D. lse is fp32
// [B, heads, T] in natural-log units of the scaled scores (max + log(sum exp)); it is not
// interchangeable with the fused kernels' lse, so one model uses one attention throughout.
//
// Building a graph asks cuDNN's heuristics for engines and keeps the first that builds; that
// takes a second or so, once per shape. A shape no engine supports, or a build without cuDNN,
// throws mics::Error (layer "model") saying so: callers fall back to the fused kernels.
#include <memory>
#include <string>

#include "model/cuda/kernels.hpp"

namespace mics::model::cuda {

class CudnnAttention {
 public:
  // "" when this build has cuDNN; else why not.
  static std::string unavailable_reason();

  // bh = batch * layout.heads query heads of seq_len rows and head_dim columns (head_dim a
  // multiple of 8, at most 128; pointers 16-byte aligned). Builds the forward graph, and the
  // backward one unless inference_only.
  CudnnAttention(int bh, int seq_len, int head_dim, const FlashLayout& layout, bool deterministic = false,
                 bool inference_only = false);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  void forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* y, float* lse, Stream s);
  void backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* y, const bf16_t* dy, const float* lse,
                bf16_t* dq, bf16_t* dk, bf16_t* dv, Stream s);

  // Device memory held: cuDNN's workspace (the larger of the two plans'), the backward's row
  // sums of dO * O ([B, heads, T] fp32) and, unless deterministic, dQ's fp32 accumulator.
  size_t device_bytes() const;
  // e.g. "cuDNN 9.19.0 SDPA (engines 8 / 9)": the cuDNN version and the engines picked.
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mics::model::cuda
