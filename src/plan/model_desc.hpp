#pragma once
// The models `mics plan` sizes: the GPT of this repository (model::GptConfig: its presets and
// free sizes "L..H..C..V..T..") and larger GPT-3-style presets defined here, and the MLP stack
// of `mics engine-bench` ("mlpL..W..": L units of width -> width, model/mlp.hpp), with the
// quantities the cost model needs: parameters per engine unit, training FLOPs, and activation
// memory per micro-batch with and without recompute.
//
// The MLP has no sequence: a sample is its "token" (seq_len 1), so every per-token quantity
// below is per sample for it.
#include <cstdint>
#include <string>
#include <vector>

#include "model/gpt.hpp"

namespace mics::plan {

enum class ModelKind { kGpt, kMlp };

struct ModelDesc {
  std::string name;
  model::GptConfig config;  // kGpt only
  std::string source;       // where the sizes come from
  ModelKind kind = ModelKind::kGpt;
  // kMlp: `mics engine-bench --layers L --width W`, sizes {W, W, ..., W} (L + 1 of them).
  int mlp_layers = 0, mlp_width = 0;

  bool is_mlp() const { return kind == ModelKind::kMlp; }
  // The sequence length a run takes when none is given: the GPT's context; 1 for the MLP.
  int default_seq_len() const;
  std::string describe() const;  // "L4 H4 C128 ..." or "MLP 8 x 256"

  // Engine units as the drivers cut them: model::Gpt's (unit 0 = embeddings + final LayerNorm,
  // 1..L blocks); the MLP's layers 0..L-1, W*W + W parameters each (W [out, in] then b).
  std::vector<uint64_t> unit_sizes() const;
  uint64_t params() const;  // all units
  // Training FLOPs per token (forward + backward), recomputation not counted. GPT:
  // 6 * params + 6 * L * C * T (DESIGN.md; model::GptConfig::flops_per_token). MLP, as its
  // kernels compute (model::Mlp::forward_flops/backward_flops): per layer 2W^2 forward,
  // 2W^2 + W backward for dW and db, and 2W^2 for the input gradient except the first layer's:
  // 6LW^2 - 2W^2 + LW per sample.
  double flops_per_token(int seq_len) const;
  // Forward FLOPs per token of one unit: 2 * unit params (+ 2 * C * T of attention for a block);
  // the MLP's 2W^2.
  double unit_forward_flops_per_token(int unit, int seq_len) const;
  // The MLP's backward FLOPs per sample of one unit (see flops_per_token).
  double mlp_unit_backward_flops(int unit) const;

  // Activation bytes per micro-batch on an accelerator with bf16 activations (Korthikanti et
  // al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1, no
  // tensor/sequence parallelism): per layer s*b*h*(34 + 5*a*s/h) bytes; with full recompute
  // each layer keeps only its bf16 input, 2*s*b*h, plus one layer's full activations live
  // during its recomputation. Plus the fp32 logits, 4*s*b*V (their gradient overwrites them in
  // place, as model::GptPass does).
  uint64_t gpu_activation_bytes(int micro_batch, int seq_len, bool recompute) const;
  // One transformer layer's activations without recompute: s*b*h*34 + 5*a*s^2*b bytes.
  double layer_activation_bytes(int micro_batch, int seq_len) const;
  // The CPU engine's activations, exactly model::Gpt::activation_bytes (the MLP:
  // model::Mlp::activation_bytes, which `mics engine-bench` gives the engine).
  uint64_t engine_activation_bytes(int micro_batch, int seq_len, bool recompute) const;
};

// Plan presets ("1.3b", "2.7b", "6.7b", "13b", "100b", "175b", "roberta-10b", "roberta-50b"),
// then model::GptConfig's presets and free sizes, then the MLP "mlpL<layers>W<width>". Throws
// mics::Error (layer plan) listing them.
ModelDesc find_model(const std::string& name);
// The engine bench's MLP: L layers of W -> W. Throws mics::Error (layer plan) unless both >= 1.
ModelDesc mlp_model(int layers, int width);
std::vector<std::string> model_names();

}  // namespace mics::plan
