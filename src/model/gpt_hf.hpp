#pragma once
// Hugging Face GPT-2 (transformers' GPT2LMHeadModel) names and layouts of our GPT's tensors.
// HF's Conv1D stores a projection's weight as [in, out], the transpose of ours ([out, in]);
// everything else has the same layout. The head is tied to transformer.wte.weight.
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/gpt.hpp"

namespace mics::model {

struct HfTensor {
  std::string name;       // e.g. "transformer.h.0.attn.c_attn.weight"
  int unit = 0;           // engine unit (gpt.hpp)
  size_t offset = 0;      // first element inside the unit
  size_t rows = 1, cols = 1;  // our layout: [rows, cols] (rows = 1 for a vector)
  bool transposed = false;    // HF layout is [cols, rows]
  std::vector<int64_t> hf_shape() const;
};

std::vector<HfTensor> gpt2_hf_tensors(const GptConfig& config);
nlohmann::json gpt2_hf_config(const GptConfig& config);
// Reads n_layer, n_head, n_embd, vocab_size, n_positions; throws naming what is missing.
GptConfig gpt_config_from_hf(const nlohmann::json& config);

// Our unit arrays -> one HF tensor's values (row-major, HF layout), and back.
std::vector<float> to_hf(const HfTensor& t, const float* unit);
void from_hf(const HfTensor& t, const float* hf, float* unit);

}  // namespace mics::model
