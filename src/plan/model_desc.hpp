#pragma once
// The models `mics plan` sizes: the GPT of this repository (model::GptConfig: its presets and
// free sizes "L..H..C..V..T..") and larger GPT-3-style presets defined here, with the
// quantities the cost model needs: parameters per engine unit, training FLOPs, and activation
// memory per micro-batch with and without recompute.
#include <cstdint>
#include <string>
#include <vector>

#include "model/gpt.hpp"

namespace mics::plan {

struct ModelDesc {
  std::string name;
  model::GptConfig config;
  std::string source;  // where the sizes come from

  // Engine units as model::Gpt cuts them: unit 0 = embeddings + final LayerNorm, 1..L blocks.
  std::vector<uint64_t> unit_sizes() const;
  uint64_t params() const;  // all units
  // Training FLOPs per token (forward + backward), recomputation not counted:
  // 6 * params + 6 * L * C * T (DESIGN.md; model::GptConfig::flops_per_token).
  double flops_per_token(int seq_len) const;
  // Forward FLOPs per token of one unit: 2 * unit params (+ 2 * C * T of attention for a block).
  double unit_forward_flops_per_token(int unit, int seq_len) const;

  // Activation bytes per micro-batch on an accelerator with bf16 activations (Korthikanti et
  // al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1, no
  // tensor/sequence parallelism): per layer s*b*h*(34 + 5*a*s/h) bytes; with full recompute
  // each layer keeps only its bf16 input, 2*s*b*h, plus one layer's full activations live
  // during its recomputation. Plus the fp32 logits, 4*s*b*V (their gradient overwrites them in
  // place, as model::GptPass does).
  uint64_t gpu_activation_bytes(int micro_batch, int seq_len, bool recompute) const;
  // One transformer layer's activations without recompute: s*b*h*34 + 5*a*s^2*b bytes.
  double layer_activation_bytes(int micro_batch, int seq_len) const;
  // The CPU engine's activations, exactly model::Gpt::activation_bytes.
  uint64_t engine_activation_bytes(int micro_batch, int seq_len, bool recompute) const;
};

// Plan presets ("1.3b", "2.7b", "6.7b", "13b", "100b", "175b", "roberta-10b", "roberta-50b"),
// then model::GptConfig's presets and free sizes. Throws mics::Error (layer plan) listing them.
ModelDesc find_model(const std::string& name);
std::vector<std::string> model_names();

}  // namespace mics::plan
