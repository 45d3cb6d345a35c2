#pragma once
// The GPT-2 building blocks on a CUDA device (internal to model/; gpt_cuda.hpp is the public
// face). Host-callable launchers over device pointers, so this header needs no CUDA headers and
// the tests (plain C++) call every kernel directly against the CPU kernels of gpt_kernels.hpp.
//
// Types: activations are bf16 (stored as uint16_t here, __nv_bfloat16 in the .cu files), the
// residual stream bf16 or fp32 (CudaOptions::residual_bf16: the kernels that touch it take
// either), LayerNorm statistics, gradients and master parameters fp32; every reduction
// accumulates in fp32. Rows are tokens (N = B*T), row-major, as on the CPU.
// Every launcher takes the stream it runs on (a cudaStream_t passed as void*; null: the legacy
// default stream) and throws mics::Error (layer "model") when a launch fails.
#include <cstddef>
#include <cstdint>

namespace mics::model::cuda {

using bf16_t = uint16_t;  // bit pattern of a bfloat16
using Stream = void*;     // cudaStream_t

// out[n] = (x[n] - mean) * rstd * w + b (bf16), mean and rstd per row (fp32). x is the residual
// stream: fp32, or bf16 (CudaOptions::residual_bf16); the statistics are taken in fp32 either way.
void layernorm_forward(const float* x, const float* w, const float* b, bf16_t* out, float* mean,
                       float* rstd, int rows, int channels, Stream s);
void layernorm_forward(const bf16_t* x, const float* w, const float* b, bf16_t* out, float* mean,
                       float* rstd, int rows, int channels, Stream s);
// dx += dL/dx (fp32), and dx_bf16 (unless null) = the new dx in bf16; dx null: dx_bf16 += dL/dx
// (the residual gradient kept in bf16 only, added to in fp32 and rounded); dw += and db += (fp32),
// or with accumulate false dw = and db = (their old contents not read: a zeroed gradient's
// first write; the same holds for the accumulate flags below).
// partial: scratch of layernorm_partial_floats(rows, channels) floats. dx_colsum_partial (may be
// null; else layernorm_colsum_partial_floats floats, and dx_bf16 not null): per-chunk column
// sums of the new dx, for add_column_partials with the returned chunk count: the bias gradient
// of the linear layer whose output entered the residual stream here, without reading dx again.
int layernorm_backward(const bf16_t* dout, const float* x, const float* mean, const float* rstd, const float* w,
                       float* dx, bf16_t* dx_bf16, float* dw, float* db, float* partial, int rows, int channels,
                       Stream s, float* dx_colsum_partial = nullptr, bool accumulate = true);
// The same with the forward's input x in bf16 (the residual stream kept in bf16).
int layernorm_backward(const bf16_t* dout, const bf16_t* x, const float* mean, const float* rstd, const float* w,
                       float* dx, bf16_t* dx_bf16, float* dw, float* db, float* partial, int rows, int channels,
                       Stream s, float* dx_colsum_partial = nullptr, bool accumulate = true);
size_t layernorm_partial_floats(int rows, int channels);
size_t layernorm_colsum_partial_floats(int rows, int channels);
// out [cols] += the sum over chunks of partial [chunks][cols], in chunk order.
void add_column_partials(const float* partial, int chunks, int cols, float* out, Stream s, bool accumulate = true);

// out += column sums of x [rows, cols] (bias gradients). partial: colsum_partial_floats floats.
void column_sum(const bf16_t* x, float* out, float* partial, int rows, int cols, Stream s, bool accumulate = true);
size_t colsum_partial_floats(int rows, int cols);

// GELU (tanh approximation), bf16 in and out; backward: dx = dout * gelu'(x) (dx may be dout).
void gelu_forward(const bf16_t* x, bf16_t* out, size_t count, Stream s);
void gelu_backward(const bf16_t* x, const bf16_t* dout, bf16_t* dx, size_t count, Stream s);

// out[b, t] = wte[tokens[b, t]] + wpe[t] (fp32 in; out fp32, or bf16 rounded once).
void embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, float* out,
                       int batch, int seq_len, int channels, Stream s);
void embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, bf16_t* out,
                       int batch, int seq_len, int channels, Stream s);
// dwte[tokens[b, t]] += dout[b, t] (atomics); dwpe[t] += sum_b dout[b, t] (in batch order).
// accumulate false: dwpe[t] = that sum, and dwpe's rows seq_len..wpe_rows-1 = 0 (dwte is still
// added to: the classifier's weight GEMM writes it first).
void embedding_backward(const int32_t* tokens, const float* dout, float* dwte, float* dwpe, int batch, int seq_len,
                        int channels, Stream s, bool accumulate = true, int wpe_rows = 0);
// The same from a bf16 dout (the residual gradient kept in bf16: CudaOptions::residual_grad_bf16).
void embedding_backward(const int32_t* tokens, const bf16_t* dout, float* dwte, float* dwpe, int batch, int seq_len,
                        int channels, Stream s, bool accumulate = true, int wpe_rows = 0);

// Mean cross-entropy over rows of logits [rows, vocab] (row stride ld >= vocab, bf16): losses[n]
// = lse - logit[target]. With grad, the logits are replaced in place by dL/dlogits =
// (softmax - onehot) * grad_scale (grad_scale = 1/rows for the mean), and the padding columns
// vocab..ld by zeros. loss_sum (unless null)
// += the sum of losses (one fp32 on the device, added by a single block in row order).
void cross_entropy(bf16_t* logits, const int32_t* targets, float* losses, int rows, int vocab, int ld,
                   bool grad, float grad_scale, Stream s);
void sum_losses(const float* losses, int rows, float* loss_sum, Stream s);

// Vocab-parallel cross-entropy (model/gpt_tp.hpp) over this rank's slice of the vocabulary:
// logits [rows, vl] with row stride ld, column j being vocabulary id v0 + j. Three passes
// around the tensor group's all-reduces: the row max; with the global max, the sum of
// exponentials into sums[r] and the target's logit (0 when the target is outside the slice)
// into sums[rows + r]; with the global log-sum-exp, dL/dlogits = (softmax - onehot) *
// grad_scale in place, the padding columns vl..ld zeroed.
void vocab_slice_max(const bf16_t* logits, float* row_max, int rows, int vl, int ld, Stream s);
void vocab_slice_sums(const bf16_t* logits, const int32_t* targets, const float* row_max, float* sums, int rows,
                      int vl, int ld, int v0, Stream s);
void vocab_slice_grad(bf16_t* logits, const int32_t* targets, const float* lse, int rows, int vl, int ld, int v0,
                      float grad_scale, Stream s);

// out = residual + (y + bias[column]) over [rows, channels] (fp32; out may equal residual): a
// row-parallel GEMM's summed partial outputs, its bias and the residual stream.
void add_bias_residual(const float* y, const float* bias, const float* residual, float* out, int rows, int channels,
                       Stream s);

// Attention helpers (the GEMMs run in gpt_cuda.cu through cuBLASLt).
// qkv [B, T, 3, H, D] -> q, k, v each [B, H, T, D] (at out, out + N*C, out + 2*N*C).
void attention_split_heads(const bf16_t* qkv, bf16_t* out, int batch, int seq_len, int heads,
                           int head_dim, Stream s);
// The inverse: q, k, v [B, H, T, D] -> qkv [B, T, 3, H, D].
void attention_merge_qkv(const bf16_t* in, bf16_t* qkv, int batch, int seq_len, int heads,
                         int head_dim, Stream s);
// y [B, H, T, D] <-> [B, T, H, D] (= [N, C]); to_heads selects the direction.
void attention_permute(const bf16_t* in, bf16_t* out, int batch, int seq_len, int heads,
                       int head_dim, bool to_heads, Stream s);
// Causal softmax of each row of scores [BH, T, T] (already scaled), in place: probabilities at
// columns <= row, zeros above.
void causal_softmax(bf16_t* scores, int bh, int seq_len, Stream s);
// dscores = P * (dP - sum_j dP*P) * scale, in place in dp (zeros above the diagonal).
void causal_softmax_backward(const bf16_t* p, bf16_t* dp, int bh, int seq_len, float scale,
                             Stream s);

// Flash-style fused causal attention (D = 64 or 128) on bh = B * heads heads: y and the
// log-sum-exp per row (fp32 [B, heads, T]); backward gives dq, dk, dv. Where each head's [T, D]
// rows live (FlashLayout): q, k, v, dq, dk, dv at (b * T + t) * ld_qkv + h * D + d; y, dy at
// (b * T + t) * ld_o + h * D + d. The default (heads 1, ld = D) is [BH, T, D]; heads H,
// ld_qkv 3C, ld_o C reads the qkv GEMM's [B, T, 3, H, D] output in place (k at qkv + C, v at
// qkv + 2C) and writes y as [N, C]. flash_supported says whether a head size has the kernels.
struct FlashLayout {
  int heads = 1;
  int ld_qkv = 0;  // 0: heads * head_dim
  int ld_o = 0;    // 0: heads * head_dim
};
bool flash_supported(int head_dim);
void flash_attention_forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* y,
                             float* lse, int bh, int seq_len, int head_dim, Stream s,
                             const FlashLayout& layout = {});
// scratch: flash_scratch_floats(bh, seq_len, head_dim) floats. stages: 1 (each query tile's
// Q/dO waited for) or 2 (the next tile's fetched during this one; measured no faster on the
// H200). min_blocks 3: launch bounds for 3 blocks per SM; key_tile 128: blocks of 128 keys
// over 8 warps (half the Q/dO loads and dQ atomics); both head size 64 only, else ignored.
void flash_attention_backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* y,
                              const bf16_t* dy, const float* lse, bf16_t* dq, bf16_t* dk,
                              bf16_t* dv, float* scratch, int bh, int seq_len, int head_dim,
                              Stream s, int stages = 1, const FlashLayout& layout = {},
                              int min_blocks = 0, int key_tile = 64);
size_t flash_scratch_floats(int bh, int seq_len, int head_dim);

// Conversions, and a fill used to poison outputs in the tests.
void f32_to_bf16(const float* in, bf16_t* out, size_t count, Stream s);
void bf16_to_f32(const bf16_t* in, float* out, size_t count, Stream s);
void fill_bf16(bf16_t* out, size_t count, float value, Stream s);
void fill_f32(float* out, size_t count, float value, Stream s);

// Sum of squares of x (fp32) into *out (fp32 on the device): partial sums per block in
// partial (global_norm_partial_floats floats), then one block adds them in order.
void sum_squares(const float* x, size_t count, float* out, float* partial, Stream s);
size_t sum_squares_partial_floats();

// AdamW over a flat fp32 array, the engine's update (shard/engine.cpp): g = grad * grad_scale *
// clip, clip = min(1, clip_norm / sqrt(*norm_sq)) when clip_norm > 0; decoupled weight decay;
// bias corrections for step t (1-based). Skips everything when *norm_sq is not finite. Writes
// the bf16 copy of the new parameters (unless null).
struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay, grad_scale, clip_norm;
  int64_t t;
};
void adamw(float* param, bf16_t* param_bf16, const float* grad, float* m, float* v, size_t count,
           const float* norm_sq, const AdamWArgs& a, Stream s);

}  // namespace mics::model::cuda
