// Model sizes for the cost model: plan presets (GPT-3 family, the RoBERTa sizes of the ZeRO-3
// anchors), then model::GptConfig's presets and free sizes.
#include "plan/model_desc.hpp"

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "model/mlp.hpp"

namespace mics::plan {

namespace {

struct Preset {
  const char* name;
  model::GptConfig config;  // L, H, C, V, T
  const char* source;
};

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = {
      // GPT-3 sizes: Brown et al. 2020, "Language Models are Few-Shot Learners", Table 2.1
      // (n_layers, d_model; heads chosen so d_head = 128 where the table's heads do not divide
      // d_model: 1.3B lists 24 heads of 128 for d_model 2048, 13B d_model 5140).
      {"1.3b", {24, 16, 2048, 50257, 2048}, "GPT-3 XL (Brown et al. 2020, Table 2.1), 16 heads of 128"},
      {"2.7b", {32, 32, 2560, 50257, 2048}, "GPT-3 2.7B (Brown et al. 2020, Table 2.1)"},
      {"6.7b", {32, 32, 4096, 50257, 2048}, "GPT-3 6.7B (Brown et al. 2020, Table 2.1)"},
      {"13b", {40, 40, 5120, 50257, 2048}, "GPT-3 13B (Brown et al. 2020, Table 2.1; d_model 5120 = 40 x 128)"},
      // 100B: a GPT-3-style size at 12*L*C^2 ~ 100e9 (C = 10240 = 80 heads of 128, 80 layers),
      // the scale of MiCS's 100B experiments (Zhang et al. 2022, VLDB).
      {"100b", {80, 80, 10240, 50257, 2048}, "GPT-3-style 100B: L80 C10240 (12*L*C^2 = 100.7e9)"},
      {"175b", {96, 96, 12288, 50257, 2048}, "GPT-3 175B (Brown et al. 2020, Table 2.1)"},
      // The ZeRO-3 anchors' RoBERTa-10B/50B (shared/anchors/README.md): the sources give only the
      // sizes; these shapes reach them with 12*L*h^2 (assumption: h 2560 x 128 layers, h 8192 x
      // 62 layers), RoBERTa's vocabulary 50265, sequence 512.
      {"roberta-10b", {128, 40, 2560, 50265, 512}, "assumed shape for RoBERTa-10B: L128 h2560 (10.2B)"},
      {"roberta-50b", {62, 64, 8192, 50265, 512}, "assumed shape for RoBERTa-50B: L62 h8192 (50.4B)"},
  };
  return table;
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& p : presets()) names.emplace_back(p.name);
  for (const auto& n : model::GptConfig::preset_names()) names.push_back(n);
  names.emplace_back("L..H..C..V..T.. (free size)");
  names.emplace_back("mlpL..W.. (the engine bench's MLP)");
  return names;
}

ModelDesc mlp_model(int layers, int width) {
  if (layers < 1 || width < 1)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("an MLP of {} layers of width {}", layers, width),
                {.layer = "plan", .where = "--model", .hint = "layers and width must be >= 1, e.g. mlpL8W256"});
  ModelDesc m;
  m.name = fmt::format("mlpL{}W{}", layers, width);
  m.source = "model::Mlp as `mics engine-bench --layers L --width W` builds it (src/model/mlp.hpp)";
  m.kind = ModelKind::kMlp;
  m.mlp_layers = layers;
  m.mlp_width = width;
  return m;
}

namespace {

// "mlpL8W256" -> (8, 256); false when the name is not of that form.
bool parse_mlp_name(const std::string& name, int& layers, int& width) {
  if (name.rfind("mlpL", 0) != 0) return false;
  const size_t w = name.find('W', 4);
  if (w == std::string::npos || w == 4 || w + 1 >= name.size()) return false;
  const std::string l_text = name.substr(4, w - 4), w_text = name.substr(w + 1);
  const auto digits = [](const std::string& t) { return t.find_first_not_of("0123456789") == std::string::npos; };
  if (!digits(l_text) || !digits(w_text) || l_text.size() > 6 || w_text.size() > 6) return false;
  layers = std::stoi(l_text);
  width = std::stoi(w_text);
  return true;
}

}  // namespace

ModelDesc find_model(const std::string& name) {
  for (const auto& p : presets())
    if (name == p.name) return ModelDesc{p.name, p.config, p.source};
  if (int layers = 0, width = 0; parse_mlp_name(name, layers, width)) return mlp_model(layers, width);
  try {
    return ModelDesc{name, model::GptConfig::from_name(name), "model::GptConfig (src/model/gpt_config.cpp)"};
  } catch (const Error&) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("unknown model '{}'; known: {}", name, join(model_names(), ", ")),
                {.layer = "plan", .where = "--model", .hint = "use a preset or a free size like L24H16C2048V50257T2048"});
  }
}

int ModelDesc::default_seq_len() const { return is_mlp() ? 1 : config.max_seq; }

std::string ModelDesc::describe() const {
  return is_mlp() ? fmt::format("MLP {} x {}", mlp_layers, mlp_width) : config.describe();
}

std::vector<uint64_t> ModelDesc::unit_sizes() const {
  if (is_mlp()) {
    const uint64_t w = static_cast<uint64_t>(mlp_width);
    return std::vector<uint64_t>(static_cast<size_t>(mlp_layers), w * w + w);
  }
  const model::Gpt gpt(config);
  std::vector<uint64_t> sizes;
  for (int u = 0; u < gpt.num_units(); ++u) sizes.push_back(gpt.unit_numel(u));
  return sizes;
}

uint64_t ModelDesc::params() const {
  if (!is_mlp()) return config.num_params();
  uint64_t total = 0;
  for (uint64_t u : unit_sizes()) total += u;
  return total;
}

double ModelDesc::flops_per_token(int seq_len) const {
  if (!is_mlp()) return config.flops_per_token(seq_len);
  const double L = mlp_layers, W = mlp_width;
  return 6.0 * L * W * W - 2.0 * W * W + L * W;
}

double ModelDesc::unit_forward_flops_per_token(int unit, int seq_len) const {
  if (is_mlp()) return 2.0 * static_cast<double>(mlp_width) * mlp_width;
  const model::Gpt gpt(config);
  const double params_u = static_cast<double>(gpt.unit_numel(unit));
  return 2.0 * params_u + (unit > 0 ? 2.0 * config.channels * static_cast<double>(seq_len) : 0.0);
}

double ModelDesc::mlp_unit_backward_flops(int unit) const {
  const double W = mlp_width;
  return 2.0 * W * W + W + (unit > 0 ? 2.0 * W * W : 0.0);
}

double ModelDesc::layer_activation_bytes(int micro_batch, int seq_len) const {
  // The MLP has no transformer layer; its activations are counted whole (engine_activation_bytes).
  if (is_mlp()) return 0.0;
  const double s = seq_len, b = micro_batch, h = config.channels, a = config.heads;
  return s * b * h * 34.0 + 5.0 * a * s * s * b;
}

uint64_t ModelDesc::gpu_activation_bytes(int micro_batch, int seq_len, bool recompute) const {
  // The MLP runs on the CPU kernels only: its fp32 accounting serves everywhere.
  if (is_mlp()) return engine_activation_bytes(micro_batch, seq_len, recompute);
  const double s = seq_len, b = micro_batch, h = config.channels, L = config.layers;
  const double full_layer = layer_activation_bytes(micro_batch, seq_len);
  const double layers_bytes = recompute ? L * 2.0 * s * b * h + full_layer : L * full_layer;
  const double logits = 4.0 * s * b * config.vocab;
  return static_cast<uint64_t>(layers_bytes + logits);
}

uint64_t ModelDesc::engine_activation_bytes(int micro_batch, int seq_len, bool recompute) const {
  if (is_mlp()) {
    // No sequence and no recompute in the engine bench: a micro-batch of samples.
    return model::Mlp(std::vector<int>(static_cast<size_t>(mlp_layers) + 1, mlp_width)).activation_bytes(micro_batch);
  }
  return model::Gpt(config).activation_bytes(micro_batch, seq_len, recompute);
}

}  // namespace mics::plan
