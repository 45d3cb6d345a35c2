#pragma once
// bf16 GEMMs with fp32 accumulation through cuBLASLt (internal to model/), in the row-major
// terms of the CPU kernels (gpt_kernels.hpp): a linear layer's weight is [OC, IC]. Fused
// epilogues (bias, GELU with its input kept, GELU's gradient) are used where cuBLASLt has an
// algorithm for them, else the same result comes from a plain GEMM and a kernel.
// No CUDA headers here: device pointers and the stream are passed as plain pointers.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "model/cuda/kernels.hpp"

namespace mics::model::cuda {

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // Use fused epilogues when cuBLASLt offers them (default); off: plain GEMMs + kernels.
  void set_fused_epilogues(bool on) { fused_ = on; }
  // > 1: each GEMM shape's first call times that many of cuBLASLt's heuristic candidates and
  // keeps the fastest (gemm.cu); 0 or 1: the heuristic's first. Set before the first GEMM.
  void set_autotune(int candidates);

  // out [rows, oc] (bf16) = in [rows, ic] w^T + bias (bf16 [oc], may be null).
  void linear(const bf16_t* in, const bf16_t* w, const bf16_t* bias, bf16_t* out, int rows, int ic, int oc,
              Stream s);
  // out [rows, oc] (fp32) = in [rows, ic] w^T: no bias (a tensor-parallel partial sum).
  void linear_f32(const bf16_t* in, const bf16_t* w, float* out, int rows, int ic, int oc, Stream s);
  // Same with the output row stride ld_out >= oc (the logits, padded rows).
  void linear_ld(const bf16_t* in, const bf16_t* w, bf16_t* out, int ld_out, int rows, int ic, int oc, Stream s);
  // pre = in w^T + bias; out = gelu(pre) (both bf16 [rows, oc]).
  void linear_gelu(const bf16_t* in, const bf16_t* w, const bf16_t* bias, bf16_t* pre, bf16_t* out, int rows,
                   int ic, int oc, Stream s);
  // out (fp32) = in w^T + bias (fp32) + residual (fp32); out may equal residual.
  void linear_residual(const bf16_t* in, const bf16_t* w, const float* bias, const float* residual, float* out,
                       int rows, int ic, int oc, Stream s);
  // The same with the residual stream in bf16: out (bf16) = in w^T + bias (bf16) + residual (bf16),
  // summed in fp32 and rounded once (where cuBLASLt has the bias epilogue).
  void linear_residual(const bf16_t* in, const bf16_t* w, const bf16_t* bias, const bf16_t* residual, bf16_t* out,
                       int rows, int ic, int oc, Stream s);
  // din [rows, ic] = dout [rows, oc] (row stride ld_dout) w; times gelu'(gelu_pre) unless null.
  void linear_backward_input(const bf16_t* dout, int ld_dout, const bf16_t* w, const bf16_t* gelu_pre,
                             bf16_t* din, int rows, int ic, int oc, Stream s);
  // dw [oc, ic] += dout^T in (fp32 accumulation into the fp32 gradient); accumulate false:
  // dw = dout^T in (dw's old contents neither read nor kept: a zeroed gradient's first write).
  void linear_backward_weight(const bf16_t* dout, int ld_dout, const bf16_t* in, float* dw, int rows, int ic, int oc,
                              Stream s, bool accumulate = true);

  // A batch of column-major products D = alpha op(A) op(B) (bf16 in and out), for attention:
  // D [m, n] (ld ldd), op(A) [m, k], op(B) [k, n], with strides between the batch's matrices.
  struct Batched {
    bool ta = false, tb = false;
    int m = 0, n = 0, k = 0;
    const bf16_t* a = nullptr;
    int lda = 0;
    long long stride_a = 0;
    const bf16_t* b = nullptr;
    int ldb = 0;
    long long stride_b = 0;
    bf16_t* d = nullptr;
    int ldd = 0;
    long long stride_d = 0;
    int batch = 1;
    float alpha = 1.0f;
  };
  void batched(const Batched& g, Stream s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool fused_ = true;
};

}  // namespace mics::model::cuda
