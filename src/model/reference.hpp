#pragma once
// Single-process reference training of the MLP: what the sharded engine must reproduce.
//
// Semantics (shard/engine.hpp): the global batch of optimizer step t is world ranks x
// micro_steps x batch samples (model/mlp.hpp: sample_index). The gradient is the mean of the
// per-micro-batch gradients of the per-micro-batch mean losses, i.e. the gradient of the loss
// averaged over the global batch. Then, in order:
//   - non-finite gradient anywhere: the step is skipped (no update, Adam's step count and
//     moments unchanged);
//   - global-norm clipping: with clip > 0 and norm > clip, g *= clip / norm;
//   - AdamW, decoupled weight decay on every parameter:
//       p -= lr*wd*p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//       p -= lr * mhat / (sqrt(vhat) + eps),  mhat = m/(1-b1^t), vhat = v/(1-b2^t).
#include <cstdint>
#include <vector>

#include "model/mlp.hpp"

namespace mics::model {

struct AdamWOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;
  float clip_norm = 0.0f;  // 0 disables
};

struct ReferenceStep {
  double loss = 0;       // mean of the micro-batch losses
  double grad_norm = 0;  // global norm of the averaged gradient, before clipping
  bool skipped = false;
};

class ReferenceTrainer {
 public:
  ReferenceTrainer(const Mlp& mlp, const SyntheticData& data, const AdamWOptions& options,
                   uint64_t init_seed, int world, int micro_steps, int batch);

  // One optimizer step on the global batch of `step`. `poison` makes the gradient non-finite
  // (what a NaN on any rank does), so the step is skipped.
  ReferenceStep step(int64_t step, bool poison = false);

  // The gradient of the global batch of `step` (averaged), per layer, in double.
  std::vector<std::vector<double>> global_gradient(int64_t step, double* loss) const;

  const std::vector<std::vector<float>>& params() const { return params_; }
  int adam_steps() const { return adam_steps_; }

 private:
  const Mlp& mlp_;
  const SyntheticData& data_;
  AdamWOptions options_;
  int world_, micro_steps_, batch_;
  int adam_steps_ = 0;
  std::vector<std::vector<float>> params_, m_, v_;
};

}  // namespace mics::model
