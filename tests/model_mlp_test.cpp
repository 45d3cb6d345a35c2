// The MLP stack (model/mlp.hpp) against finite differences, and the single-process reference
// trainer (model/reference.hpp) that the engine equivalence tests compare with.
//
// Finite differences: central, h = 1e-2, of a scalar computed in double from the fp32
// outputs. Its error is the truncation term h^2/6 * f''' (about 1e-5 here) plus fp32 rounding
// of the outputs amplified by 1/(2h) (about 1e-5), so the bound is 1e-3 * (1 + |g|). Every
// check is double-checked: the same comparison against a gradient that is wrong by 1% in one
// element (or has the GELU derivative dropped) must fail, so the bound is tight enough to see
// real mistakes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "model/mlp.hpp"
#include "model/reference.hpp"

using mics::model::AdamWOptions;
using mics::model::hash_uniform;
using mics::model::Mlp;
using mics::model::MlpPass;
using mics::model::ReferenceTrainer;
using mics::model::SyntheticData;

namespace {

constexpr double kH = 1e-2;
constexpr double kTol = 1e-3;

std::vector<float> random_vector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * hash_uniform(seed, 77, i);
  return v;
}

// max over i of |a_i - b_i| / (1 + |b_i|)
double max_scaled_error(const std::vector<double>& numeric, const std::vector<float>& analytic) {
  double worst = 0;
  for (size_t i = 0; i < numeric.size(); ++i)
    worst = std::max(worst, std::abs(numeric[i] - analytic[i]) / (1.0 + std::abs(numeric[i])));
  return worst;
}

// f = sum_k r_k * out_k of one layer, in double.
double layer_objective(const Mlp& mlp, int layer, const std::vector<float>& params,
                       const std::vector<float>& in, const std::vector<float>& r, int batch) {
  const size_t n = static_cast<size_t>(batch) * static_cast<size_t>(mlp.out_dim(layer));
  std::vector<float> pre(n), out(n);
  mlp.forward_layer(layer, params.data(), in.data(), pre.data(), out.data(), batch);
  double f = 0;
  for (size_t k = 0; k < n; ++k) f += static_cast<double>(r[k]) * out[k];
  return f;
}

std::vector<double> numeric_gradient(std::vector<float>& v, const std::function<double()>& f) {
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const float saved = v[i];
    v[i] = static_cast<float>(saved + kH);
    const double plus = f();
    v[i] = static_cast<float>(saved - kH);
    const double minus = f();
    v[i] = saved;
    g[i] = (plus - minus) / (2 * kH);
  }
  return g;
}

class LayerGradient : public ::testing::TestWithParam<int> {};

TEST_P(LayerGradient, BackwardMatchesFiniteDifferences) {
  const Mlp mlp({13, 17, 9, 5});
  const int layer = GetParam(), batch = 3;
  const size_t nin = static_cast<size_t>(batch) * mlp.in_dim(layer);
  const size_t nout = static_cast<size_t>(batch) * mlp.out_dim(layer);
  std::vector<float> params(mlp.layer_numel(layer));
  mlp.init_layer(layer, 42, params.data());
  auto in = random_vector(nin, 1000 + layer, 1.5f);
  const auto r = random_vector(nout, 2000 + layer);

  std::vector<float> pre(nout), out(nout), grad(params.size()), din(nin);
  mlp.forward_layer(layer, params.data(), in.data(), pre.data(), out.data(), batch);
  mlp.backward_layer(layer, params.data(), in.data(), pre.data(), r.data(), grad.data(), din.data(),
                     batch);

  auto f = [&] { return layer_objective(mlp, layer, params, in, r, batch); };
  const auto num_grad = numeric_gradient(params, f);
  const auto num_din = numeric_gradient(in, f);
  EXPECT_LT(max_scaled_error(num_grad, grad), kTol) << "parameter gradient of layer " << layer;
  EXPECT_LT(max_scaled_error(num_din, din), kTol) << "input gradient of layer " << layer;

  std::printf("layer %d: finite-difference error %.2g (parameters), %.2g (inputs)\n", layer,
              max_scaled_error(num_grad, grad), max_scaled_error(num_din, din));
  // Double check: a 1% error in the largest weight gradient, and in the largest bias gradient,
  // is caught.
  const size_t bias0 = static_cast<size_t>(mlp.out_dim(layer)) * mlp.in_dim(layer);
  auto largest = [&](size_t from, size_t to) {
    return static_cast<size_t>(
        std::max_element(grad.begin() + static_cast<std::ptrdiff_t>(from),
                         grad.begin() + static_cast<std::ptrdiff_t>(to),
                         [](float a, float b) { return std::abs(a) < std::abs(b); }) -
        grad.begin());
  };
  for (size_t i : {largest(0, bias0), largest(bias0, grad.size())}) {
    auto wrong = grad;
    wrong[i] *= 1.01f;
    EXPECT_GT(std::abs(grad[i]), 0.5f);
    EXPECT_GT(max_scaled_error(num_grad, wrong), 2 * kTol) << "element " << i;
  }
  // ... and so is dropping GELU's derivative (hidden layers only).
  if (layer < mlp.num_layers() - 1) {
    std::vector<float> linear_grad(grad.size());
    std::vector<float> dpre(nout);
    for (size_t k = 0; k < nout; ++k) dpre[k] = r[k];
    // As if the layer were linear: dW = r^T x.
    for (int o = 0; o < mlp.out_dim(layer); ++o)
      for (int i = 0; i < mlp.in_dim(layer); ++i) {
        double acc = 0;
        for (int b = 0; b < batch; ++b)
          acc += static_cast<double>(dpre[static_cast<size_t>(b) * mlp.out_dim(layer) + o]) *
                 in[static_cast<size_t>(b) * mlp.in_dim(layer) + i];
        linear_grad[static_cast<size_t>(o) * mlp.in_dim(layer) + i] = static_cast<float>(acc);
      }
    EXPECT_GT(max_scaled_error(num_grad, linear_grad), 10 * kTol);
  }
}

INSTANTIATE_TEST_SUITE_P(Layers, LayerGradient, ::testing::Values(0, 1, 2));

TEST(Mlp, WholeModelLossAndGradient) {
  const Mlp mlp({13, 17, 9, 5});
  const SyntheticData data(13, 5, 7);
  const int batch = 4;
  std::vector<float> x, y;
  data.batch(0, batch, x, y);
  auto params = mlp.init(42);
  std::vector<std::vector<float>> grads;
  std::vector<const float*> pp;
  std::vector<float*> gp;
  for (int l = 0; l < mlp.num_layers(); ++l) {
    grads.emplace_back(mlp.layer_numel(l));
    pp.push_back(params[l].data());
    gp.push_back(grads[l].data());
  }
  const float loss = mlp.forward_backward(pp, gp, x.data(), y.data(), batch);
  EXPECT_GT(loss, 0.0f);
  EXPECT_FLOAT_EQ(loss, mlp.loss(pp, x.data(), y.data(), batch));

  // The loss by hand: mean over batch*out of squared errors.
  {
    MlpPass pass(mlp, x.data(), y.data(), batch);
    for (int l = 0; l < mlp.num_layers(); ++l) pass.forward(l, pp[l]);
    double sum = 0;
    for (size_t k = 0; k < y.size(); ++k) sum += std::pow(double{pass.output()[k]} - y[k], 2);
    EXPECT_NEAR(loss, sum / static_cast<double>(y.size()), 1e-6);
  }

  auto f = [&] { return static_cast<double>(mlp.loss(pp, x.data(), y.data(), batch)); };
  for (int l = 0; l < mlp.num_layers(); ++l) {
    const auto num = numeric_gradient(params[l], f);
    // The loss gradients are small (about 1e-2): compare with a scale of the largest.
    double scale = 0;
    for (double g : num) scale = std::max(scale, std::abs(g));
    double worst = 0;
    for (size_t i = 0; i < num.size(); ++i) worst = std::max(worst, std::abs(num[i] - grads[l][i]));
    EXPECT_LT(worst, 1e-3 * scale + 1e-6) << "layer " << l << " (largest gradient " << scale << ")";
    std::printf("layer %d: loss gradient error %.2g of the largest element %.2g\n", l, worst,
                scale);
    // Double check: a 1% error in the largest element is more than the bound.
    const size_t big = static_cast<size_t>(
        std::max_element(num.begin(), num.end(),
                         [](double a, double b) { return std::abs(a) < std::abs(b); }) -
        num.begin());
    EXPECT_GT(0.01 * std::abs(grads[l][big]), 1e-3 * scale + 1e-6);
  }
}

TEST(Mlp, LayerwisePassEqualsWholeModel) {
  const Mlp mlp({13, 17, 9, 5});
  const SyntheticData data(13, 5, 7);
  std::vector<float> x, y;
  data.batch(100, 5, x, y);
  const auto params = mlp.init(3);
  std::vector<std::vector<float>> g1, g2;
  std::vector<const float*> pp;
  std::vector<float*> gp;
  for (int l = 0; l < mlp.num_layers(); ++l) {
    g1.emplace_back(mlp.layer_numel(l));
    g2.emplace_back(mlp.layer_numel(l));
    pp.push_back(params[l].data());
    gp.push_back(g1[l].data());
  }
  const float loss1 = mlp.forward_backward(pp, gp, x.data(), y.data(), 5);
  MlpPass pass(mlp, x.data(), y.data(), 5);
  for (int l = 0; l < mlp.num_layers(); ++l) pass.forward(l, params[l].data());
  const float loss2 = pass.loss();
  for (int l = mlp.num_layers() - 1; l >= 0; --l) pass.backward(l, params[l].data(), g2[l].data());
  EXPECT_EQ(loss1, loss2);
  EXPECT_EQ(g1, g2);
}

TEST(Mlp, DeterministicInitAndData) {
  const Mlp mlp({13, 17, 9, 5});
  EXPECT_EQ(mlp.total_numel(), size_t{17 * 13 + 17 + 9 * 17 + 9 + 5 * 9 + 5});
  EXPECT_EQ(mlp.init(5), mlp.init(5));
  EXPECT_NE(mlp.init(5), mlp.init(6));
  const SyntheticData data(13, 5, 7);
  // A sample depends on its global index only, not on the batch it is drawn in.
  std::vector<float> x1, y1, x2, y2;
  data.batch(10, 4, x1, y1);
  data.batch(12, 1, x2, y2);
  EXPECT_TRUE(std::equal(x2.begin(), x2.end(), x1.begin() + 2 * 13));
  EXPECT_TRUE(std::equal(y2.begin(), y2.end(), y1.begin() + 2 * 5));
  for (float v : y1) EXPECT_LE(std::abs(v), 1.0f);
  for (float v : x1) EXPECT_LT(std::abs(v), 1.0f);
  // The global batch of a step is consecutive samples whatever the split.
  EXPECT_EQ(mics::model::sample_index(2, 0, 0, 0, 4, 3, 5), 2 * 4 * 3 * 5);
  EXPECT_EQ(mics::model::sample_index(2, 2, 3, 4, 4, 3, 5), 3 * 4 * 3 * 5 - 1);
}

double max_param_diff(const std::vector<std::vector<float>>& a,
                      const std::vector<std::vector<float>>& b) {
  double worst = 0;
  for (size_t l = 0; l < a.size(); ++l)
    for (size_t i = 0; i < a[l].size(); ++i)
      worst = std::max(worst, std::abs(double{a[l][i]} - b[l][i]));
  return worst;
}

TEST(ReferenceTrainer, FirstStepIsSignedLearningRate) {
  // At t = 1, mhat = g and vhat = g^2: the update is lr * g / (|g| + eps), after the decay.
  const Mlp mlp({3, 4, 2});
  const SyntheticData data(3, 2, 1);
  AdamWOptions opt;
  opt.lr = 0.01f;
  opt.weight_decay = 0.1f;
  ReferenceTrainer ref(mlp, data, opt, 9, 2, 2, 3);
  const auto before = ref.params();
  double loss = 0;
  const auto g = ref.global_gradient(0, &loss);
  const auto report = ref.step(0);
  EXPECT_FALSE(report.skipped);
  EXPECT_NEAR(report.loss, loss, 1e-12);
  for (size_t l = 0; l < before.size(); ++l)
    for (size_t i = 0; i < before[l].size(); ++i) {
      const double gi = static_cast<float>(g[l][i]);
      const double expect = before[l][i] * (1 - 0.01 * 0.1) - 0.01 * gi / (std::abs(gi) + 1e-8);
      EXPECT_NEAR(ref.params()[l][i], expect, 1e-7);
    }
}

TEST(ReferenceTrainer, GradientIsTheGlobalBatchMean) {
  // The same global batch (12 consecutive samples per step) split as 4 ranks x 1 x 3,
  // 1 rank x 4 micro-steps x 3, 2 x 1 x 6 and 1 x 1 x 12 trains to the same parameters.
  const Mlp mlp({13, 17, 9, 5});
  const SyntheticData data(13, 5, 7);
  AdamWOptions opt;
  opt.lr = 1e-2f;
  opt.weight_decay = 0.01f;
  ReferenceTrainer a(mlp, data, opt, 1, 4, 1, 3), b(mlp, data, opt, 1, 1, 4, 3),
      c(mlp, data, opt, 1, 2, 1, 6), d(mlp, data, opt, 1, 1, 1, 12);
  for (int t = 0; t < 4; ++t) {
    const double la = a.step(t).loss, lb = b.step(t).loss;
    EXPECT_NEAR(la, lb, 1e-6);
    c.step(t);
    d.step(t);
  }
  std::printf("largest parameter difference between the splits: %.2g %.2g %.2g\n",
              max_param_diff(a.params(), b.params()), max_param_diff(a.params(), c.params()),
              max_param_diff(a.params(), d.params()));
  EXPECT_LT(max_param_diff(a.params(), b.params()), 1e-6);
  EXPECT_LT(max_param_diff(a.params(), c.params()), 1e-6);
  EXPECT_LT(max_param_diff(a.params(), d.params()), 1e-6);
}

TEST(ReferenceTrainer, LossDecreasesAndClippingMatters) {
  const Mlp mlp({13, 17, 9, 5});
  const SyntheticData data(13, 5, 7);
  AdamWOptions opt;
  opt.lr = 1e-2f;
  ReferenceTrainer plain(mlp, data, opt, 1, 2, 2, 8);
  AdamWOptions clipped_opt = opt;
  clipped_opt.clip_norm = 1e-4f;
  ReferenceTrainer clipped(mlp, data, clipped_opt, 1, 2, 2, 8);
  double first = 0, last = 0;
  for (int t = 0; t < 40; ++t) {
    const auto r = plain.step(t);
    if (t == 0) first = r.loss;
    last = r.loss;
    const auto rc = clipped.step(t);
    EXPECT_GT(rc.grad_norm, 1e-4);  // so every step is clipped
  }
  EXPECT_LT(last, 0.7 * first);
  EXPECT_GT(max_param_diff(plain.params(), clipped.params()), 1e-3);
  std::printf("loss %.4f -> %.4f in 40 steps; clipped differs by %.3g\n", first, last,
              max_param_diff(plain.params(), clipped.params()));
}

TEST(ReferenceTrainer, PoisonedStepIsSkipped) {
  const Mlp mlp({13, 17, 9, 5});
  const SyntheticData data(13, 5, 7);
  AdamWOptions opt;
  opt.lr = 1e-2f;
  ReferenceTrainer ref(mlp, data, opt, 1, 2, 1, 4);
  ref.step(0);
  const auto before = ref.params();
  const auto r = ref.step(1, /*poison=*/true);
  EXPECT_TRUE(r.skipped);
  EXPECT_FALSE(std::isfinite(r.grad_norm));
  EXPECT_EQ(ref.params(), before);
  EXPECT_EQ(ref.adam_steps(), 1);
}

}  // namespace
