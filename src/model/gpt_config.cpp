// GptConfig: presets, free size strings, validation and parameter counts.
#include <fmt/format.h>

#include <cctype>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "model/gpt.hpp"
#include "model/gpt_layers.hpp"

namespace mics::model {

namespace {

struct Preset {
  const char* name;
  GptConfig config;
};

// GPT-2's sizes; every preset but tiny has GPT-2's vocabulary and context.
const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = {
      {"tiny", GptConfig{}},
      {"gpt2-124m", GptConfig{12, 12, 768, 50257, 1024}},
      {"gpt2-350m", GptConfig{24, 16, 1024, 50257, 1024}},
      {"gpt2-774m", GptConfig{36, 20, 1280, 50257, 1024}},
      {"gpt2-1.5b", GptConfig{48, 25, 1600, 50257, 1024}},
  };
  return table;
}

Error config_error(const std::string& message, const std::string& where) {
  return Error(ErrorKind::kInvalidArgument, message,
               {.layer = "model",
                .where = where,
                .hint = fmt::format("use a preset ({}) or a size like L12H12C768V50257T1024 "
                                    "(any of the letters L H C V T, the rest from tiny), with C "
                                    "divisible by H",
                                    join(GptConfig::preset_names(), ", "))});
}

// "L12H12C768": each letter at most once, followed by a positive decimal number.
bool parse_free_size(const std::string& text, GptConfig& config) {
  if (text.empty()) return false;
  std::string seen;
  size_t i = 0;
  while (i < text.size()) {
    const char letter = static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
    if (std::string("LHCVT").find(letter) == std::string::npos) return false;
    if (seen.find(letter) != std::string::npos) return false;
    seen += letter;
    ++i;
    int64_t value = 0;
    const size_t digits_start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      value = value * 10 + (text[i] - '0');
      if (value > 1'000'000'000) return false;
      ++i;
    }
    if (i == digits_start) return false;
    const int v = static_cast<int>(value);
    switch (letter) {
      case 'L':
        config.layers = v;
        break;
      case 'H':
        config.heads = v;
        break;
      case 'C':
        config.channels = v;
        break;
      case 'V':
        config.vocab = v;
        break;
      default:
        config.max_seq = v;
        break;
    }
  }
  return true;
}

std::string count_text(double count) {
  if (count >= 1e9) return fmt::format("{:.2f}B", count / 1e9);
  if (count >= 1e6) return fmt::format("{:.1f}M", count / 1e6);
  if (count >= 1e3) return fmt::format("{:.1f}K", count / 1e3);
  return fmt::format("{:.0f}", count);
}

}  // namespace

GptConfig GptConfig::from_name(const std::string& name) {
  for (const auto& preset : presets())
    if (name == preset.name) return preset.config;
  GptConfig config;
  if (!parse_free_size(name, config))
    throw config_error(
        fmt::format("unknown GPT model '{}'; presets: {}", name, join(preset_names(), ", ")),
        "parsing the model name");
  config.validate();
  return config;
}

std::vector<std::string> GptConfig::preset_names() {
  std::vector<std::string> names;
  for (const auto& preset : presets()) names.emplace_back(preset.name);
  return names;
}

std::string GptConfig::describe() const {
  return fmt::format("L{} H{} C{} V{} T{} ({} params)", layers, heads, channels, vocab, max_seq,
                     count_text(static_cast<double>(num_params())));
}

void GptConfig::validate() const {
  const std::string where = fmt::format("checking the GPT config L{} H{} C{} V{} T{}", layers,
                                        heads, channels, vocab, max_seq);
  if (layers < 1 || heads < 1 || channels < 1 || vocab < 1 || max_seq < 1)
    throw config_error("every GPT size (layers, heads, channels, vocab, context) must be >= 1",
                       where);
  if (channels % heads != 0)
    throw config_error(
        fmt::format("{} channels do not split into {} heads of equal size", channels, heads),
        where);
}

size_t GptConfig::num_params() const {
  return layers::embed_numel(vocab, max_seq, channels) +
         static_cast<size_t>(layers) * layers::block_numel(channels);
}

double GptConfig::flops_per_token(int seq_len) const {
  return 6.0 * static_cast<double>(num_params()) +
         6.0 * static_cast<double>(layers) * channels * seq_len;
}

}  // namespace mics::model
