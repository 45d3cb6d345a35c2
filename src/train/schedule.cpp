#include "train/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace mics::train {

float LrSchedule::at(int step) const {
  if (step < warmup) return peak * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const float min_lr = peak * min_ratio;
  const int decay_steps = steps - warmup;
  if (decay_steps <= 1) return peak;
  const double progress = std::clamp(static_cast<double>(step - warmup) / (decay_steps - 1), 0.0, 1.0);
  const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return static_cast<float>(min_lr + (peak - min_lr) * cosine);
}

}  // namespace mics::train
