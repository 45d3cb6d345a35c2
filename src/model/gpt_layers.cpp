#include "model/gpt_layers.hpp"

#include "model/gpt_kernels.hpp"

namespace mics::model::layers {

namespace k = kernels;

namespace {

// Hands out consecutive pieces of one float array.
class Carver {
 public:
  explicit Carver(float* base) : next_(base) {}
  float* take(size_t count) {
    float* start = next_;
    if (next_) next_ += count;
    taken_ += count;
    return start;
  }
  size_t taken() const { return taken_; }

 private:
  float* next_;
  size_t taken_ = 0;
};

// The carving functions below, run on a null base, count the floats they need: the sizes and
// the layout come from the same code.
BlockActivations carve_block(Carver& cv, const Dims& d) {
  const size_t n = d.rows(), c = static_cast<size_t>(d.channels);
  const size_t t = static_cast<size_t>(d.seq_len);
  BlockActivations a;
  a.ln1 = cv.take(n * c);
  a.ln1_mean = cv.take(n);
  a.ln1_rstd = cv.take(n);
  a.qkv = cv.take(3 * n * c);
  a.att = cv.take(static_cast<size_t>(d.batch) * static_cast<size_t>(d.heads) * t * t);
  a.atty = cv.take(n * c);
  a.res2 = cv.take(n * c);
  a.ln2 = cv.take(n * c);
  a.ln2_mean = cv.take(n);
  a.ln2_rstd = cv.take(n);
  a.fch = cv.take(4 * n * c);
  a.fch_gelu = cv.take(4 * n * c);
  return a;
}

BlockScratch carve_scratch(Carver& cv, const Dims& d) {
  const size_t n = d.rows(), c = static_cast<size_t>(d.channels);
  const size_t t = static_cast<size_t>(d.seq_len);
  BlockScratch s;
  s.dln = cv.take(n * c);
  s.datty = cv.take(n * c);
  s.dqkv = cv.take(3 * n * c);
  s.dfch = cv.take(4 * n * c);
  s.dscore = cv.take(t * t);
  return s;
}

HeadActivations carve_head(Carver& cv, const Dims& d, int vocab) {
  const size_t n = d.rows(), c = static_cast<size_t>(d.channels);
  HeadActivations a;
  a.lnf = cv.take(n * c);
  a.lnf_mean = cv.take(n);
  a.lnf_rstd = cv.take(n);
  a.logits = cv.take(n * static_cast<size_t>(vocab));
  a.lse = cv.take(n);
  a.losses = cv.take(n);
  return a;
}

}  // namespace

size_t block_numel(int channels) {
  const size_t c = static_cast<size_t>(channels);
  return 12 * c * c + 13 * c;
}

size_t embed_numel(int vocab, int max_seq, int channels) {
  const size_t c = static_cast<size_t>(channels);
  return (static_cast<size_t>(vocab) + static_cast<size_t>(max_seq)) * c + 2 * c;
}

size_t block_activation_floats(const Dims& d) {
  Carver cv(nullptr);
  carve_block(cv, d);
  return cv.taken();
}

BlockActivations block_activations(float* storage, const Dims& d) {
  Carver cv(storage);
  return carve_block(cv, d);
}

size_t block_scratch_floats(const Dims& d) {
  Carver cv(nullptr);
  carve_scratch(cv, d);
  return cv.taken();
}

BlockScratch block_scratch(float* storage, const Dims& d) {
  Carver cv(storage);
  return carve_scratch(cv, d);
}

size_t head_activation_floats(const Dims& d, int vocab) {
  Carver cv(nullptr);
  carve_head(cv, d, vocab);
  return cv.taken();
}

HeadActivations head_activations(float* storage, const Dims& d, int vocab) {
  Carver cv(storage);
  return carve_head(cv, d, vocab);
}

void block_forward(const Dims& d, const BlockTensors<const float>& p, const float* x,
                   const BlockActivations& a, float* out) {
  const int n = static_cast<int>(d.rows()), c = d.channels;
  k::layernorm_forward(x, p.ln1_w, p.ln1_b, a.ln1, a.ln1_mean, a.ln1_rstd, n, c);
  k::linear_forward(a.ln1, p.qkv_w, p.qkv_b, nullptr, a.qkv, n, c, 3 * c);
  k::attention_forward(a.qkv, a.att, a.atty, d.batch, d.seq_len, c, d.heads);
  k::linear_forward(a.atty, p.proj_w, p.proj_b, x, a.res2, n, c, c);
  k::layernorm_forward(a.res2, p.ln2_w, p.ln2_b, a.ln2, a.ln2_mean, a.ln2_rstd, n, c);
  k::linear_forward(a.ln2, p.fc_w, p.fc_b, nullptr, a.fch, n, c, 4 * c);
  k::gelu_forward(a.fch, a.fch_gelu, 4 * d.rows() * static_cast<size_t>(c));
  k::linear_forward(a.fch_gelu, p.fcproj_w, p.fcproj_b, a.res2, out, n, 4 * c, c);
}

void block_backward(const Dims& d, const BlockTensors<const float>& p,
                    const BlockTensors<float>& grad, const float* x, const BlockActivations& a,
                    const BlockScratch& s, float* dresid) {
  const int n = static_cast<int>(d.rows()), c = d.channels;
  // MLP: out = res2 + fcproj(gelu(fc(ln2(res2)))); the residual passes dresid through, so
  // the LayerNorm's input gradient is added to it.
  k::linear_backward(dresid, a.fch_gelu, p.fcproj_w, s.dfch, grad.fcproj_w, grad.fcproj_b, n, 4 * c,
                     c);
  k::gelu_backward(a.fch, s.dfch, s.dfch, 4 * d.rows() * static_cast<size_t>(c));
  k::linear_backward(s.dfch, a.ln2, p.fc_w, s.dln, grad.fc_w, grad.fc_b, n, c, 4 * c);
  k::layernorm_backward(s.dln, a.res2, a.ln2_mean, a.ln2_rstd, p.ln2_w, dresid, grad.ln2_w,
                        grad.ln2_b, n, c, /*accumulate_dx=*/true);
  // Attention: res2 = x + proj(attn(qkv(ln1(x)))).
  k::linear_backward(dresid, a.atty, p.proj_w, s.datty, grad.proj_w, grad.proj_b, n, c, c);
  k::attention_backward(s.datty, a.qkv, a.att, s.dqkv, s.dscore, d.batch, d.seq_len, c, d.heads);
  k::linear_backward(s.dqkv, a.ln1, p.qkv_w, s.dln, grad.qkv_w, grad.qkv_b, n, c, 3 * c);
  k::layernorm_backward(s.dln, x, a.ln1_mean, a.ln1_rstd, p.ln1_w, dresid, grad.ln1_w, grad.ln1_b,
                        n, c, /*accumulate_dx=*/true);
}

float head_forward(const Dims& d, int vocab, const EmbedTensors<const float>& p, const float* x,
                   const int32_t* targets, const HeadActivations& a) {
  const int n = static_cast<int>(d.rows()), c = d.channels;
  k::layernorm_forward(x, p.lnf_w, p.lnf_b, a.lnf, a.lnf_mean, a.lnf_rstd, n, c);
  // The head is tied to the token embedding: logits = lnf wte^T, no bias.
  k::linear_forward(a.lnf, p.wte, nullptr, nullptr, a.logits, n, c, vocab);
  if (!targets) return 0.0f;
  return k::cross_entropy_forward(a.logits, targets, a.lse, a.losses, n, vocab);
}

void head_backward(const Dims& d, int vocab, const EmbedTensors<const float>& p,
                   const EmbedTensors<float>& grad, const float* x, const int32_t* targets,
                   const HeadActivations& a, float* dln, float* dx) {
  const int n = static_cast<int>(d.rows()), c = d.channels;
  k::cross_entropy_backward(a.logits, targets, a.lse, n, vocab);
  k::linear_backward(a.logits, a.lnf, p.wte, dln, grad.wte, nullptr, n, c, vocab);
  k::layernorm_backward(dln, x, a.lnf_mean, a.lnf_rstd, p.lnf_w, dx, grad.lnf_w, grad.lnf_b, n, c,
                        /*accumulate_dx=*/false);
}

}  // namespace mics::model::layers
