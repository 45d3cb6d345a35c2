#pragma once
// The GPT-2 building blocks on the CPU (internal to model/; gpt.hpp is the public face).
//
// Rows are tokens: N = B*T rows of a row-major [N, width] matrix. GEMMs go to CBLAS; the
// element-wise and row-wise loops are OpenMP loops whose every output is computed by one
// thread in a fixed order, and every reduction over rows (bias and LayerNorm weight gradients,
// embedding scatter) is split by output column, never by row, so results do not depend on the
// thread count.
//
// Conventions: a backward "overwrites" its parameter gradients (the block's grad is
// overwritten by block_backward) unless it says it accumulates.
#include <cstddef>
#include <cstdint>

namespace mics::model::kernels {

constexpr float kLayerNormEps = 1e-5f;

// out[n] = (x[n] - mean) * rstd * w + b over C channels; keeps mean and rstd per row.
void layernorm_forward(const float* x, const float* w, const float* b, float* out, float* mean,
                       float* rstd, int rows, int channels);
// dx += (or =, unless accumulate_dx) dL/dx; dw, db overwritten.
void layernorm_backward(const float* dout, const float* x, const float* mean, const float* rstd,
                        const float* w, float* dx, float* dw, float* db, int rows, int channels,
                        bool accumulate_dx);

// out [N, OC] = in [N, IC] W^T + b (+ add, a residual [N, OC], unless null). W is [OC, IC];
// b may be null.
void linear_forward(const float* in, const float* w, const float* b, const float* add, float* out,
                    int rows, int in_channels, int out_channels);
// From dout [N, OC]: din [N, IC] (overwritten, unless null), dw [OC, IC] and db [OC]
// (overwritten, db unless null).
void linear_backward(const float* dout, const float* in, const float* w, float* din, float* dw,
                     float* db, int rows, int in_channels, int out_channels);

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_forward(const float* x, float* out, size_t count);
// dx = dout * gelu'(x), in place allowed (dx == dout).
void gelu_backward(const float* x, const float* dout, float* dx, size_t count);

// Causal multi-head attention of qkv [N, 3C] (q, k, v; head h at columns h*C/H of each) into
// out [N, C]; att [B, H, T, T] keeps the softmax probabilities (zero above the diagonal).
void attention_forward(const float* qkv, float* att, float* out, int batch, int seq_len,
                       int channels, int heads);
// dqkv [N, 3C] overwritten; scratch holds T*T floats.
void attention_backward(const float* dout, const float* qkv, const float* att, float* dqkv,
                        float* scratch, int batch, int seq_len, int channels, int heads);

// Mean cross-entropy of logits [N, V] against targets; keeps the log-sum-exp and the loss per row.
float cross_entropy_forward(const float* logits, const int32_t* targets, float* lse, float* losses,
                            int rows, int vocab);
// Turns logits into dL/dlogits = (softmax - onehot) / N, in place.
void cross_entropy_backward(float* logits, const int32_t* targets, const float* lse, int rows,
                            int vocab);

// out[b, t] = wte[tokens[b, t]] + wpe[t].
void embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, float* out,
                       int batch, int seq_len, int channels);
// dwte[tokens[b, t]] += dout[b, t]; dwpe[t] += sum_b dout[b, t] (both accumulate).
void embedding_backward(const int32_t* tokens, const float* dout, float* dwte, float* dwpe,
                        int batch, int seq_len, int channels);

}  // namespace mics::model::kernels
