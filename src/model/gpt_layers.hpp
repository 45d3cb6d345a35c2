#pragma once
// The GPT-2 units as functions of explicit buffers (internal to model/): parameter views over a
// unit's flat array (layouts in gpt.hpp), the activations a block keeps, and the block and
// head forward/backward. GptPass (gpt.cpp) owns the buffers and sequences these calls; the
// tests call them directly to check each layer against finite differences.
#include <cstddef>
#include <cstdint>

namespace mics::model::layers {

struct Dims {
  int batch;     // B
  int seq_len;   // T of this pass (<= max_seq)
  int channels;  // C
  int heads;     // H
  size_t rows() const { return static_cast<size_t>(batch) * static_cast<size_t>(seq_len); }
};

// Views of a block's flat parameter (or gradient) array, in the order of gpt.hpp.
template <typename F>
struct BlockTensors {
  F* ln1_w;
  F* ln1_b;
  F* qkv_w;
  F* qkv_b;
  F* proj_w;
  F* proj_b;
  F* ln2_w;
  F* ln2_b;
  F* fc_w;
  F* fc_b;
  F* fcproj_w;
  F* fcproj_b;
};

size_t block_numel(int channels);  // 12 C^2 + 13 C

template <typename F>
BlockTensors<F> block_tensors(F* base, int channels) {
  const size_t c = static_cast<size_t>(channels);
  BlockTensors<F> t;
  F* p = base;
  auto take = [&p](size_t n) {
    F* start = p;
    p += n;
    return start;
  };
  t.ln1_w = take(c);
  t.ln1_b = take(c);
  t.qkv_w = take(3 * c * c);
  t.qkv_b = take(3 * c);
  t.proj_w = take(c * c);
  t.proj_b = take(c);
  t.ln2_w = take(c);
  t.ln2_b = take(c);
  t.fc_w = take(4 * c * c);
  t.fc_b = take(4 * c);
  t.fcproj_w = take(4 * c * c);
  t.fcproj_b = take(c);
  return t;
}

// Unit 0: wte [V, C], wpe [max_seq, C], lnf_w [C], lnf_b [C].
template <typename F>
struct EmbedTensors {
  F* wte;
  F* wpe;
  F* lnf_w;
  F* lnf_b;
};

size_t embed_numel(int vocab, int max_seq, int channels);

template <typename F>
EmbedTensors<F> embed_tensors(F* base, int vocab, int max_seq, int channels) {
  const size_t c = static_cast<size_t>(channels);
  EmbedTensors<F> t;
  t.wte = base;
  t.wpe = t.wte + static_cast<size_t>(vocab) * c;
  t.lnf_w = t.wpe + static_cast<size_t>(max_seq) * c;
  t.lnf_b = t.lnf_w + c;
  return t;
}

// What a block keeps from forward for backward (pointers into storage of
// block_activation_floats floats, carved by block_activations).
struct BlockActivations {
  float* ln1;       // [N, C]
  float* ln1_mean;  // [N]
  float* ln1_rstd;  // [N]
  float* qkv;       // [N, 3C]
  float* att;       // [B, H, T, T] softmax probabilities
  float* atty;      // [N, C] attention output before the projection
  float* res2;      // [N, C] residual after attention
  float* ln2;       // [N, C]
  float* ln2_mean;  // [N]
  float* ln2_rstd;  // [N]
  float* fch;       // [N, 4C] before GELU
  float* fch_gelu;  // [N, 4C]
};
size_t block_activation_floats(const Dims& d);
BlockActivations block_activations(float* storage, const Dims& d);

// Gradient scratch of block_backward, shared by all blocks.
struct BlockScratch {
  float* dln;     // [N, C]
  float* datty;   // [N, C]
  float* dqkv;    // [N, 3C]
  float* dfch;    // [N, 4C]
  float* dscore;  // [T, T]
};
size_t block_scratch_floats(const Dims& d);
BlockScratch block_scratch(float* storage, const Dims& d);

// out [N, C] = block(x). out must not alias x.
void block_forward(const Dims& d, const BlockTensors<const float>& p, const float* x,
                   const BlockActivations& a, float* out);
// dresid: dL/dout on entry, dL/dx on return. grad overwritten. a is what block_forward(x) kept.
void block_backward(const Dims& d, const BlockTensors<const float>& p,
                    const BlockTensors<float>& grad, const float* x, const BlockActivations& a,
                    const BlockScratch& s, float* dresid);

// The head: final LayerNorm, logits = lnf(x) wte^T, and the mean cross-entropy.
struct HeadActivations {
  float* lnf;       // [N, C]
  float* lnf_mean;  // [N]
  float* lnf_rstd;  // [N]
  float* logits;    // [N, V]; head_backward turns it into dL/dlogits
  float* lse;       // [N] log-sum-exp of each row of logits
  float* losses;    // [N]
};
size_t head_activation_floats(const Dims& d, int vocab);
HeadActivations head_activations(float* storage, const Dims& d, int vocab);

// Returns the mean loss, or 0 without targets (then only the logits are computed).
float head_forward(const Dims& d, int vocab, const EmbedTensors<const float>& p, const float* x,
                   const int32_t* targets, const HeadActivations& a);
// Overwrites grad.wte, grad.lnf_w, grad.lnf_b (not grad.wpe) and dx = dL/dx [N, C].
// dln is [N, C] scratch.
void head_backward(const Dims& d, int vocab, const EmbedTensors<const float>& p,
                   const EmbedTensors<float>& grad, const float* x, const int32_t* targets,
                   const HeadActivations& a, float* dln, float* dx);

}  // namespace mics::model::layers
