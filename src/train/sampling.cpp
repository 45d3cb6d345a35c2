#include "train/sampling.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "io/byte_tokenizer.hpp"
#include "io/dataset.hpp"

namespace mics::train {

int32_t greedy_token(const float* logits, int vocab) {
  return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
}

int32_t sample_token(const float* logits, int vocab, double temperature, double uniform01) {
  const float top = *std::max_element(logits, logits + vocab);
  std::vector<double> weight(static_cast<size_t>(vocab));
  double total = 0;
  for (int v = 0; v < vocab; ++v)
    total += weight[static_cast<size_t>(v)] = std::exp((logits[v] - top) / temperature);
  double u = uniform01 * total;
  for (int v = 0; v < vocab; ++v)
    if ((u -= weight[static_cast<size_t>(v)]) <= 0) return v;
  return vocab - 1;  // rounding left u just above 0: the last token
}

std::vector<int32_t> sample_prompt(const io::TokenDataset& source, int seq_len) {
  std::vector<int32_t> in(static_cast<size_t>(seq_len)), targets(static_cast<size_t>(seq_len));
  source.sequence(0, in.data(), targets.data());
  in.resize(static_cast<size_t>(std::min(8, seq_len)));
  return in;
}

std::string format_samples(const std::vector<int32_t>& prompt, const std::vector<std::vector<int32_t>>& seqs, int vocab,
                           bool from_validation) {
  auto render = [vocab](const std::vector<int32_t>& ids) {
    if (vocab <= 256) return io::byte_decode(std::span<const int32_t>(ids));
    std::string text;
    for (int32_t id : ids) text += fmt::format("{} ", id);
    return text;
  };
  std::string text = fmt::format("samples (prompt: the first {} tokens of a {} sequence):\n", prompt.size(),
                                 from_validation ? "validation" : "training");
  for (size_t r = 0; r < seqs.size(); ++r)
    text += fmt::format("  [{}] {}\n", r == 0 ? "greedy" : "t=0.8", render(seqs[r]));
  return text;
}

}  // namespace mics::train
