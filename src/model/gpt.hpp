#pragma once
// GPT-2 on the CPU: the model the trainer runs under every strategy.
//
// Architecture (as GPT-2 / llm.c): token + position embeddings; L pre-LayerNorm blocks
//   x += attn(ln1(x));  x += mlp(ln2(x))   with causal multi-head attention (H heads of C/H)
//   and a 4C GELU (tanh approximation) MLP; a final LayerNorm; logits = ln_f(x) wte^T
//   (the output head is tied to the token embedding); loss = mean cross-entropy over B*T.
//
// Engine units (shard/engine.hpp): unit 0 holds the embeddings and the final LayerNorm
// (wte, wpe, lnf_w, lnf_b), units 1..L one transformer block each. A micro-step is
//   embed_forward(u0); block_forward(1..L); head_forward(u0) (loss);
//   head_backward(u0, g0); block_backward(L..1); embed_backward(u0, g0)
// so unit 0 is gathered twice per micro-step like every block (forward and backward) and
// its gradient, which has two contributions (head and embedding), is complete after
// embed_backward. Every function takes parameter pointers per unit, so it runs the same on
// parameters gathered by the engine or on a local full copy.
//
// Parameter layouts, per unit, in this order, row-major (PyTorch's nn.Linear layout: the
// weight of a C_in -> C_out projection is [C_out, C_in]):
//   unit 0:  wte [V, C], wpe [T, C], lnf_w [C], lnf_b [C]
//   block:   ln1_w [C], ln1_b [C], qkv_w [3C, C], qkv_b [3C], proj_w [C, C], proj_b [C],
//            ln2_w [C], ln2_b [C], fc_w [4C, C], fc_b [4C], fcproj_w [C, 4C], fcproj_b [C]
// (qkv_w rows: q for all heads, then k, then v; head h uses rows h*C/H .. (h+1)*C/H - 1 of each.)
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mics::model {

struct GptConfig {
  int layers = 2;      // L
  int heads = 4;       // H, divides channels
  int channels = 64;   // C
  int vocab = 256;     // V
  int max_seq = 64;    // T: the context length (size of wpe)

  // Presets: tiny (L2 H4 C64 V256 T64), gpt2-124m (L12 H12 C768 V50257 T1024),
  // gpt2-350m (L24 H16 C1024), gpt2-774m (L36 H20 C1280), gpt2-1.5b (L48 H25 C1600).
  // A free size is written "L12H12C768V50257T1024" (any subset of the letters, the rest from
  // tiny). Throws mics::Error (kInvalidArgument) naming the presets on an unknown name.
  static GptConfig from_name(const std::string& name);
  static std::vector<std::string> preset_names();
  std::string describe() const;  // "L12 H12 C768 V50257 T1024 (124.4M params)"
  void validate() const;         // throws on C % H != 0, sizes < 1, ...
  size_t num_params() const;     // total, embeddings counted once (tied head)
  // Training FLOPs per token (forward + backward): 6 * params + 6 * L * C * T (DESIGN.md).
  double flops_per_token(int seq_len) const;
};

class Gpt {
 public:
  explicit Gpt(GptConfig config);
  const GptConfig& config() const { return config_; }

  int num_units() const { return config_.layers + 1; }
  size_t unit_numel(int unit) const;
  std::string unit_name(int unit) const;  // "embed", "block.0", ...

  // GPT-2 initialisation, deterministic in (seed, unit, index) and identical on every rank:
  // weights ~ N(0, 0.02), the residual projections (proj_w, fcproj_w) ~ N(0, 0.02/sqrt(2L)),
  // wpe ~ N(0, 0.01), biases 0, LayerNorm weights 1.
  void init_unit(int unit, uint64_t seed, float* params) const;

  // Activation memory of one micro-batch of B x T tokens, in bytes, with and without
  // per-block recomputation (what the engine's memory plan adds per rank).
  uint64_t activation_bytes(int batch, int seq_len, bool recompute) const;

 private:
  GptConfig config_;
};

// The activations of one micro-batch (B sequences of T <= max_seq tokens). With recompute,
// a block keeps only its input and recomputes its internals in block_backward (which then
// needs the same params as block_forward).
class GptPass {
 public:
  GptPass(const Gpt& gpt, int batch, int seq_len, bool recompute);
  ~GptPass();
  GptPass(const GptPass&) = delete;
  GptPass& operator=(const GptPass&) = delete;

  // inputs and targets: B*T token ids < V (targets may be null for inference). Copied.
  void set_tokens(const int32_t* inputs, const int32_t* targets);

  void embed_forward(const float* unit0);
  void block_forward(int layer, const float* block);  // layer in [0, L)
  // Final LayerNorm, logits and (with targets) the mean cross-entropy, returned (0 without).
  float head_forward(const float* unit0);
  // [B, T, V], valid from head_forward until head_backward, which turns the buffer into the
  // logits' gradient in place (a second B*T*V buffer would double the largest activation).
  const float* logits() const;

  // Gradients. grad0 (unit_numel(0) floats) is overwritten by head_backward and accumulated
  // into by embed_backward; a block's grad is overwritten by block_backward.
  void head_backward(const float* unit0, float* grad0);
  void block_backward(int layer, const float* block, float* grad);
  void embed_backward(const float* unit0, float* grad0);

  uint64_t activation_bytes() const;  // bytes held by this pass's buffers

 private:
  struct Impl;
  Impl* impl_;
};

// Whole-model helpers on full local parameters (units[u] = unit u's flat array).
// Loss of a micro-batch and, unless grads is null, its gradient (grads[u] sized unit_numel).
float gpt_forward_backward(const Gpt& gpt, const std::vector<const float*>& units,
                           std::vector<float*>* grads, const int32_t* inputs,
                           const int32_t* targets, int batch, int seq_len, bool recompute);

// Threads for the model's loops and BLAS in this process (0: one per core this rank may use,
// from its CPU affinity). Sets OpenMP's and OpenBLAS's thread counts for the calling thread's
// parallel regions. compute_threads() returns the count in effect (never 0).
void set_compute_threads(int threads);
int compute_threads();

}  // namespace mics::model
