#include "model/gpt_hf.hpp"

#include <fmt/format.h>

#include "base/error.hpp"

namespace mics::model {

std::vector<int64_t> HfTensor::hf_shape() const {
  if (rows == 1 && !transposed) return {static_cast<int64_t>(cols)};
  if (transposed) return {static_cast<int64_t>(cols), static_cast<int64_t>(rows)};
  return {static_cast<int64_t>(rows), static_cast<int64_t>(cols)};
}

std::vector<HfTensor> gpt2_hf_tensors(const GptConfig& g) {
  const size_t C = static_cast<size_t>(g.channels), V = static_cast<size_t>(g.vocab), T = static_cast<size_t>(g.max_seq);
  std::vector<HfTensor> out;
  size_t at = 0;
  auto add = [&](int unit, std::string name, size_t rows, size_t cols, bool transposed) {
    out.push_back({std::move(name), unit, at, rows, cols, transposed});
    at += rows * cols;
  };
  add(0, "transformer.wte.weight", V, C, false);
  add(0, "transformer.wpe.weight", T, C, false);
  add(0, "transformer.ln_f.weight", 1, C, false);
  add(0, "transformer.ln_f.bias", 1, C, false);
  for (int l = 0; l < g.layers; ++l) {
    at = 0;
    const std::string h = fmt::format("transformer.h.{}.", l);
    add(l + 1, h + "ln_1.weight", 1, C, false);
    add(l + 1, h + "ln_1.bias", 1, C, false);
    add(l + 1, h + "attn.c_attn.weight", 3 * C, C, true);
    add(l + 1, h + "attn.c_attn.bias", 1, 3 * C, false);
    add(l + 1, h + "attn.c_proj.weight", C, C, true);
    add(l + 1, h + "attn.c_proj.bias", 1, C, false);
    add(l + 1, h + "ln_2.weight", 1, C, false);
    add(l + 1, h + "ln_2.bias", 1, C, false);
    add(l + 1, h + "mlp.c_fc.weight", 4 * C, C, true);
    add(l + 1, h + "mlp.c_fc.bias", 1, 4 * C, false);
    add(l + 1, h + "mlp.c_proj.weight", C, 4 * C, true);
    add(l + 1, h + "mlp.c_proj.bias", 1, C, false);
  }
  return out;
}

nlohmann::json gpt2_hf_config(const GptConfig& g) {
  // GPT-2's <|endoftext|> is id 50256; a smaller vocabulary (our byte-level one) has no such
  // token, and transformers warns about an id outside the vocabulary: say there is none.
  const nlohmann::json end_of_text = g.vocab > 50256 ? nlohmann::json(50256) : nlohmann::json(nullptr);
  return {{"model_type", "gpt2"},
          {"bos_token_id", end_of_text},
          {"eos_token_id", end_of_text},
          {"architectures", {"GPT2LMHeadModel"}},
          {"n_layer", g.layers},
          {"n_head", g.heads},
          {"n_embd", g.channels},
          {"vocab_size", g.vocab},
          {"n_positions", g.max_seq},
          {"n_ctx", g.max_seq},
          {"n_inner", nullptr},
          {"layer_norm_epsilon", 1e-5},
          {"activation_function", "gelu_new"},
          {"resid_pdrop", 0.0},
          {"embd_pdrop", 0.0},
          {"attn_pdrop", 0.0},
          {"tie_word_embeddings", true},
          {"torch_dtype", "float32"}};
}

GptConfig gpt_config_from_hf(const nlohmann::json& j) {
  GptConfig g;
  try {
    g.layers = j.at("n_layer");
    g.heads = j.at("n_head");
    g.channels = j.at("n_embd");
    g.vocab = j.at("vocab_size");
    g.max_seq = j.at("n_positions");
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, fmt::format("config.json is not a GPT-2 config: {}", e.what()),
                {.layer = "model", .where = "--init-from", .hint = "give a Hugging Face GPT-2 model directory"});
  }
  if (j.contains("activation_function") && j["activation_function"] != "gelu_new")
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config.json: activation_function {} (mics' GPT uses gelu_new)", j["activation_function"].dump()),
                {.layer = "model", .where = "--init-from", .hint = "only GPT-2 models with gelu_new load"});
  return g;
}

std::vector<float> to_hf(const HfTensor& t, const float* unit) {
  const float* src = unit + t.offset;
  std::vector<float> out(t.rows * t.cols);
  if (!t.transposed) {
    std::copy(src, src + out.size(), out.begin());
  } else {
    for (size_t r = 0; r < t.rows; ++r)
      for (size_t c = 0; c < t.cols; ++c) out[c * t.rows + r] = src[r * t.cols + c];
  }
  return out;
}

void from_hf(const HfTensor& t, const float* hf, float* unit) {
  float* dst = unit + t.offset;
  if (!t.transposed) {
    std::copy(hf, hf + t.rows * t.cols, dst);
  } else {
    for (size_t r = 0; r < t.rows; ++r)
      for (size_t c = 0; c < t.cols; ++c) dst[r * t.cols + c] = hf[c * t.rows + r];
  }
}

}  // namespace mics::model
