#include "train/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

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

}  // namespace mics::train
