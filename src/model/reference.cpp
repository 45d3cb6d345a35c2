#include "model/reference.hpp"

#include <cmath>
#include <limits>

namespace mics::model {

ReferenceTrainer::ReferenceTrainer(const Mlp& mlp, const SyntheticData& data,
                                   const AdamWOptions& options, uint64_t init_seed, int world,
                                   int micro_steps, int batch)
    : mlp_(mlp),
      data_(data),
      options_(options),
      world_(world),
      micro_steps_(micro_steps),
      batch_(batch),
      params_(mlp.init(init_seed)) {
  for (const auto& p : params_) {
    m_.emplace_back(p.size(), 0.0f);
    v_.emplace_back(p.size(), 0.0f);
  }
}

std::vector<std::vector<double>> ReferenceTrainer::global_gradient(int64_t step,
                                                                   double* loss) const {
  const int L = mlp_.num_layers();
  std::vector<std::vector<double>> sum(static_cast<size_t>(L));
  std::vector<std::vector<float>> grad(static_cast<size_t>(L));
  std::vector<const float*> params;
  std::vector<float*> grads;
  for (int l = 0; l < L; ++l) {
    sum[l].assign(params_[l].size(), 0.0);
    grad[l].resize(params_[l].size());
    params.push_back(params_[l].data());
    grads.push_back(grad[l].data());
  }
  std::vector<float> x, y;
  double loss_sum = 0;
  for (int s = 0; s < micro_steps_; ++s)
    for (int r = 0; r < world_; ++r) {
      data_.batch(sample_index(step, s, r, 0, world_, micro_steps_, batch_), batch_, x, y);
      loss_sum += mlp_.forward_backward(params, grads, x.data(), y.data(), batch_);
      for (int l = 0; l < L; ++l)
        for (size_t i = 0; i < grad[l].size(); ++i) sum[l][i] += grad[l][i];
    }
  const double n = static_cast<double>(world_) * micro_steps_;
  for (auto& layer : sum)
    for (double& g : layer) g /= n;
  if (loss) *loss = loss_sum / n;
  return sum;
}

ReferenceStep ReferenceTrainer::step(int64_t step, bool poison) {
  ReferenceStep report;
  auto g64 = global_gradient(step, &report.loss);
  // The engine holds gradients in fp32.
  std::vector<std::vector<float>> g(g64.size());
  double sq = 0;
  for (size_t l = 0; l < g64.size(); ++l) {
    g[l].resize(g64[l].size());
    for (size_t i = 0; i < g64[l].size(); ++i) {
      g[l][i] = static_cast<float>(g64[l][i]);
      sq += static_cast<double>(g[l][i]) * g[l][i];
    }
  }
  if (poison) sq = std::numeric_limits<double>::quiet_NaN();
  report.grad_norm = std::sqrt(sq);
  if (!std::isfinite(report.grad_norm)) {
    report.skipped = true;
    return report;
  }
  if (options_.clip_norm > 0 && report.grad_norm > options_.clip_norm) {
    const float scale = static_cast<float>(options_.clip_norm / report.grad_norm);
    for (auto& layer : g)
      for (float& x : layer) x *= scale;
  }
  ++adam_steps_;
  const double b1 = options_.beta1, b2 = options_.beta2, lr = options_.lr;
  const double bc1 = 1.0 - std::pow(b1, adam_steps_), bc2 = 1.0 - std::pow(b2, adam_steps_);
  for (size_t l = 0; l < params_.size(); ++l)
    for (size_t i = 0; i < params_[l].size(); ++i) {
      double p = params_[l][i];
      p -= lr * options_.weight_decay * p;
      const double gi = g[l][i];
      const double m = b1 * m_[l][i] + (1.0 - b1) * gi;
      const double v = b2 * v_[l][i] + (1.0 - b2) * gi * gi;
      m_[l][i] = static_cast<float>(m);
      v_[l][i] = static_cast<float>(v);
      p -= lr * (m / bc1) / (std::sqrt(v / bc2) + options_.eps);
      params_[l][i] = static_cast<float>(p);
    }
  return report;
}

}  // namespace mics::model
