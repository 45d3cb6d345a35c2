// The CPU GPT-2 (model/gpt.hpp) against central finite differences, layer by layer and whole,
// and its invariants: the unit-by-unit pass equals the whole-model helper, recomputation and
// the thread count change no bit, activation sizes agree, presets have GPT-2's sizes.
//
// Finite differences: f is a scalar computed in double from the fp32 outputs (a random
// projection sum_k r_k out_k for a layer, the loss for a head or the whole model); every
// parameter or input entry is moved by +-h (h = 1e-2 for a layer, 5e-3 for the whole model,
// whose larger curvature makes the h^2 term dominate at 1e-2) and the difference quotient uses
// the step actually taken in fp32. The error measure of a tensor is
//   max_i |analytic_i - numeric_i| / max_i |numeric_i|,
// relative to the tensor's largest gradient so that tiny entries do not dominate. Its sources
// are the truncation term h^2/6 f''' and fp32 rounding of f amplified by 1/(2h). Observed: at
// most 1.1e-4 for a layer or the head (bound kLayerTol = 1e-3) and 4.5e-4 for the whole model
// (bound kModelTol = 2e-3), margins of about 5-10x. Every check is double-checked: the same comparison must FAIL when the analytic
// gradient's largest entry is off by 5% or one whole tensor has its sign flipped, so a bound
// loose enough to hide a wrong sign or a dropped term would be caught here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "base/error.hpp"
#include "model/gpt.hpp"
#include "model/gpt_kernels.hpp"
#include "model/gpt_layers.hpp"
#include "model/mlp.hpp"

namespace {

namespace kn = mics::model::kernels;
namespace ly = mics::model::layers;
using mics::model::Gpt;
using mics::model::GptConfig;
using mics::model::GptPass;
using mics::model::hash_uniform;

constexpr double kH = 1e-2;       // layers and the head
constexpr double kModelH = 5e-3;  // the whole model: more curvature, a smaller step
constexpr double kLayerTol = 1e-3;  // one layer or the head (observed <= 1.1e-4)
constexpr double kModelTol = 2e-3;  // the whole model (observed <= 4.5e-4)

// B=2, T=5, C=8, H=2, V=11: small enough to check every entry.
constexpr int kB = 2, kT = 5, kC = 8, kHeads = 2, kV = 11;
constexpr int kN = kB * kT;

std::vector<float> random_vector(size_t n, uint64_t seed, float scale, float center = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = center + scale * hash_uniform(seed, 5, i);
  return v;
}

std::vector<int32_t> random_tokens(size_t n, uint64_t seed, int vocab) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i)
    t[i] = static_cast<int32_t>((hash_uniform(seed, 9, i) + 1.0f) * 0.5f * vocab) % vocab;
  return t;
}

double dot(const std::vector<float>& r, const float* out) {
  double f = 0;
  for (size_t k = 0; k < r.size(); ++k) f += static_cast<double>(r[k]) * out[k];
  return f;
}

// Central differences of f with respect to v[first + i], i < count.
std::vector<double> numeric_gradient(float* v, size_t count, const std::function<double()>& f,
                                     double h) {
  std::vector<double> g(count);
  for (size_t i = 0; i < count; ++i) {
    const float original = v[i];
    v[i] = static_cast<float>(original + h);
    const double up_step = v[i];
    const double f_up = f();
    v[i] = static_cast<float>(original - h);
    const double down_step = v[i];
    const double f_down = f();
    v[i] = original;
    g[i] = (f_up - f_down) / (up_step - down_step);
  }
  return g;
}

double scaled_error(const std::vector<double>& numeric, const std::vector<double>& analytic) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < numeric.size(); ++i) {
    worst = std::max(worst, std::abs(analytic[i] - numeric[i]));
    scale = std::max(scale, std::abs(numeric[i]));
  }
  return worst / std::max(scale, 1e-12);
}

// Checks analytic[0..count) against finite differences of f in v[0..count), and that a 5%
// error in the largest entry or a flipped sign would not pass the same bound.
void expect_gradient(const std::string& what, float* v, const float* analytic, size_t count,
                     const std::function<double()>& f, double tol, double h = kH) {
  const std::vector<double> numeric = numeric_gradient(v, count, f, h);
  std::vector<double> a(analytic, analytic + count);
  double max_abs = 0;
  for (double x : numeric) max_abs = std::max(max_abs, std::abs(x));
  ASSERT_GT(max_abs, 1e-3) << what << ": the gradient is too small for a meaningful check";
  const double err = scaled_error(numeric, a);
  EXPECT_LT(err, tol) << what;
  std::printf("  %-28s %4zu entries, error %.2e (bound %.0e)\n", what.c_str(), count, err, tol);

  const size_t largest = static_cast<size_t>(
      std::max_element(numeric.begin(), numeric.end(),
                       [](double x, double y) { return std::abs(x) < std::abs(y); }) -
      numeric.begin());
  std::vector<double> off_by_5_percent = a;
  off_by_5_percent[largest] *= 1.05;
  EXPECT_GT(scaled_error(numeric, off_by_5_percent), tol) << what << ": bound too loose";
  std::vector<double> flipped = a;
  for (double& x : flipped) x = -x;
  EXPECT_GT(scaled_error(numeric, flipped), tol) << what << ": bound too loose";
}

// Random parameters for a block, larger than GPT-2's initialisation so every path matters;
// LayerNorm weights near 1.
std::vector<float> random_block(uint64_t seed, int channels) {
  std::vector<float> p = random_vector(ly::block_numel(channels), seed, 0.4f);
  const auto t = ly::block_tensors(p.data(), channels);
  for (int c = 0; c < channels; ++c) {
    t.ln1_w[c] += 1.0f;
    t.ln2_w[c] += 1.0f;
  }
  return p;
}

std::vector<float> random_unit0(uint64_t seed, int vocab, int max_seq, int channels) {
  std::vector<float> p = random_vector(ly::embed_numel(vocab, max_seq, channels), seed, 0.5f);
  const auto t = ly::embed_tensors(p.data(), vocab, max_seq, channels);
  for (int c = 0; c < channels; ++c) t.lnf_w[c] += 1.0f;
  return p;
}

// --- layers ----------------------------------------------------------------------------

TEST(GptLayers, LayerNormBackwardMatchesFiniteDifferences) {
  std::vector<float> x = random_vector(kN * kC, 1, 1.0f, 0.3f);
  std::vector<float> w = random_vector(kC, 2, 0.5f, 1.0f), b = random_vector(kC, 3, 0.5f);
  const std::vector<float> r = random_vector(kN * kC, 4, 1.0f);
  std::vector<float> out(kN * kC), mean(kN), rstd(kN);
  auto f = [&] {
    kn::layernorm_forward(x.data(), w.data(), b.data(), out.data(), mean.data(), rstd.data(), kN,
                          kC);
    return dot(r, out.data());
  };
  f();
  // dx accumulates: start from a known value and subtract it after.
  std::vector<float> dx(kN * kC, 0.25f), dw(kC), db(kC);
  kn::layernorm_backward(r.data(), x.data(), mean.data(), rstd.data(), w.data(), dx.data(),
                         dw.data(), db.data(), kN, kC, /*accumulate_dx=*/true);
  for (float& v : dx) v -= 0.25f;
  expect_gradient("layernorm dx", x.data(), dx.data(), x.size(), f, kLayerTol);
  expect_gradient("layernorm dw", w.data(), dw.data(), w.size(), f, kLayerTol);
  expect_gradient("layernorm db", b.data(), db.data(), b.size(), f, kLayerTol);
}

TEST(GptLayers, CausalAttentionBackwardMatchesFiniteDifferences) {
  std::vector<float> qkv = random_vector(kN * 3 * kC, 11, 1.5f);
  const std::vector<float> r = random_vector(kN * kC, 12, 1.0f);
  std::vector<float> att(kB * kHeads * kT * kT), out(kN * kC);
  auto f = [&] {
    kn::attention_forward(qkv.data(), att.data(), out.data(), kB, kT, kC, kHeads);
    return dot(r, out.data());
  };
  f();
  // Causal: probabilities above the diagonal are exactly zero and rows sum to one.
  for (int bh = 0; bh < kB * kHeads; ++bh)
    for (int t = 0; t < kT; ++t) {
      double sum = 0;
      for (int j = 0; j < kT; ++j) {
        const float p = att[(static_cast<size_t>(bh) * kT + t) * kT + j];
        if (j > t) {
          EXPECT_EQ(p, 0.0f);
        }
        sum += p;
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
  // Changing the last position's q, k, v leaves every earlier output of its sequence as is.
  const std::vector<float> before = out;
  std::vector<float> saved = qkv;
  for (int c = 0; c < 3 * kC; ++c) qkv[(kT - 1) * 3 * kC + c] += 0.7f;
  f();
  for (int i = 0; i < (kT - 1) * kC; ++i) EXPECT_EQ(out[i], before[i]) << i;
  qkv = saved;
  f();

  std::vector<float> dqkv(qkv.size()), scratch(kT * kT);
  kn::attention_backward(r.data(), qkv.data(), att.data(), dqkv.data(), scratch.data(), kB, kT,
                         kC, kHeads);
  expect_gradient("attention dqkv", qkv.data(), dqkv.data(), qkv.size(), f, kLayerTol);
}

TEST(GptLayers, GeluMlpBackwardMatchesFiniteDifferences) {
  // GELU (tanh approximation) at known points.
  const float points[3] = {-1.0f, 0.0f, 1.0f};
  float values[3];
  kn::gelu_forward(points, values, 3);
  EXPECT_NEAR(values[0], -0.158808f, 1e-5f);
  EXPECT_EQ(values[1], 0.0f);
  EXPECT_NEAR(values[2], 0.841192f, 1e-5f);

  constexpr int kF = 4 * kC;
  std::vector<float> x = random_vector(kN * kC, 21, 1.0f);
  std::vector<float> fc_w = random_vector(kF * kC, 22, 0.5f), fc_b = random_vector(kF, 23, 0.5f);
  std::vector<float> proj_w = random_vector(kC * kF, 24, 0.3f), proj_b = random_vector(kC, 25, 0.5f);
  const std::vector<float> r = random_vector(kN * kC, 26, 1.0f);
  std::vector<float> h(kN * kF), g(kN * kF), y(kN * kC);
  auto f = [&] {
    kn::linear_forward(x.data(), fc_w.data(), fc_b.data(), nullptr, h.data(), kN, kC, kF);
    kn::gelu_forward(h.data(), g.data(), h.size());
    kn::linear_forward(g.data(), proj_w.data(), proj_b.data(), nullptr, y.data(), kN, kF, kC);
    return dot(r, y.data());
  };
  f();
  std::vector<float> dg(kN * kF), dx(kN * kC);
  std::vector<float> dfc_w(fc_w.size()), dfc_b(fc_b.size()), dproj_w(proj_w.size()),
      dproj_b(proj_b.size());
  kn::linear_backward(r.data(), g.data(), proj_w.data(), dg.data(), dproj_w.data(),
                      dproj_b.data(), kN, kF, kC);
  kn::gelu_backward(h.data(), dg.data(), dg.data(), dg.size());
  kn::linear_backward(dg.data(), x.data(), fc_w.data(), dx.data(), dfc_w.data(), dfc_b.data(), kN,
                      kC, kF);
  expect_gradient("mlp dx", x.data(), dx.data(), x.size(), f, kLayerTol);
  expect_gradient("mlp fc_w", fc_w.data(), dfc_w.data(), fc_w.size(), f, kLayerTol);
  expect_gradient("mlp fc_b", fc_b.data(), dfc_b.data(), fc_b.size(), f, kLayerTol);
  expect_gradient("mlp fcproj_w", proj_w.data(), dproj_w.data(), proj_w.size(), f, kLayerTol);
  expect_gradient("mlp fcproj_b", proj_b.data(), dproj_b.data(), proj_b.size(), f, kLayerTol);
}

TEST(GptLayers, BlockBackwardMatchesFiniteDifferences) {
  const ly::Dims d{kB, kT, kC, kHeads};
  std::vector<float> params = random_block(31, kC);
  std::vector<float> x = random_vector(kN * kC, 32, 1.0f);
  const std::vector<float> r = random_vector(kN * kC, 33, 1.0f);
  std::vector<float> acts_storage(ly::block_activation_floats(d));
  std::vector<float> scratch_storage(ly::block_scratch_floats(d)), out(kN * kC);
  const auto acts = ly::block_activations(acts_storage.data(), d);
  auto f = [&] {
    ly::block_forward(d, ly::block_tensors<const float>(params.data(), kC), x.data(), acts,
                      out.data());
    return dot(r, out.data());
  };
  f();
  std::vector<float> grad(params.size(), NAN), dresid = r;
  ly::block_backward(d, ly::block_tensors<const float>(params.data(), kC),
                     ly::block_tensors(grad.data(), kC), x.data(), acts,
                     ly::block_scratch(scratch_storage.data(), d), dresid.data());
  expect_gradient("block dx", x.data(), dresid.data(), x.size(), f, kLayerTol);
  // Tensor by tensor, so that a bug in one is not hidden by a larger gradient in another.
  const auto p = ly::block_tensors(params.data(), kC);
  const auto g = ly::block_tensors(grad.data(), kC);
  const size_t c = kC;
  const std::vector<std::tuple<const char*, float*, float*, size_t>> tensors = {
      {"block ln1_w", p.ln1_w, g.ln1_w, c},        {"block ln1_b", p.ln1_b, g.ln1_b, c},
      {"block qkv_w", p.qkv_w, g.qkv_w, 3 * c * c}, {"block qkv_b", p.qkv_b, g.qkv_b, 3 * c},
      {"block proj_w", p.proj_w, g.proj_w, c * c},  {"block proj_b", p.proj_b, g.proj_b, c},
      {"block ln2_w", p.ln2_w, g.ln2_w, c},        {"block ln2_b", p.ln2_b, g.ln2_b, c},
      {"block fc_w", p.fc_w, g.fc_w, 4 * c * c},    {"block fc_b", p.fc_b, g.fc_b, 4 * c},
      {"block fcproj_w", p.fcproj_w, g.fcproj_w, 4 * c * c},
      {"block fcproj_b", p.fcproj_b, g.fcproj_b, c}};
  for (const auto& [name, value, gradient, count] : tensors)
    expect_gradient(name, value, gradient, count, f, kLayerTol);
}

TEST(GptLayers, EmbeddingBackwardMatchesFiniteDifferences) {
  constexpr int kMaxSeq = 7;  // wpe has rows past T that must get no gradient
  std::vector<int32_t> tokens = random_tokens(kN, 41, kV);
  tokens[3] = tokens[7] = tokens[8] = 4;  // repeated tokens accumulate
  std::vector<float> wte = random_vector(kV * kC, 42, 0.5f), wpe = random_vector(kMaxSeq * kC, 43, 0.5f);
  const std::vector<float> r = random_vector(kN * kC, 44, 1.0f);
  std::vector<float> out(kN * kC);
  auto f = [&] {
    kn::embedding_forward(tokens.data(), wte.data(), wpe.data(), out.data(), kB, kT, kC);
    return dot(r, out.data());
  };
  std::vector<float> dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
  kn::embedding_backward(tokens.data(), r.data(), dwte.data(), dwpe.data(), kB, kT, kC);
  expect_gradient("embedding wte", wte.data(), dwte.data(), wte.size(), f, kLayerTol);
  expect_gradient("embedding wpe", wpe.data(), dwpe.data(), wpe.size(), f, kLayerTol);
  for (size_t i = static_cast<size_t>(kT) * kC; i < dwpe.size(); ++i) EXPECT_EQ(dwpe[i], 0.0f);
}

TEST(GptLayers, HeadCrossEntropyBackwardMatchesFiniteDifferences) {
  constexpr int kMaxSeq = 7;
  const ly::Dims d{kB, kT, kC, kHeads};
  std::vector<float> unit0 = random_unit0(51, kV, kMaxSeq, kC);
  std::vector<float> x = random_vector(kN * kC, 52, 1.0f);
  const std::vector<int32_t> targets = random_tokens(kN, 53, kV);
  std::vector<float> storage(ly::head_activation_floats(d, kV));
  const auto acts = ly::head_activations(storage.data(), d, kV);
  auto f = [&] {
    return static_cast<double>(ly::head_forward(
        d, kV, ly::embed_tensors<const float>(unit0.data(), kV, kMaxSeq, kC), x.data(),
        targets.data(), acts));
  };
  const double loss = f();
  // The loss is the mean over rows of log-sum-exp minus the target's logit, in double here.
  double expected = 0;
  for (int n = 0; n < kN; ++n) {
    double sum = 0;
    for (int v = 0; v < kV; ++v) sum += std::exp(static_cast<double>(acts.logits[n * kV + v]));
    expected += std::log(sum) - acts.logits[n * kV + targets[n]];
  }
  EXPECT_NEAR(loss, expected / kN, 1e-5);

  std::vector<float> grad(unit0.size(), NAN), dln(kN * kC), dx(kN * kC, NAN);
  const auto g = ly::embed_tensors(grad.data(), kV, kMaxSeq, kC);
  ly::head_backward(d, kV, ly::embed_tensors<const float>(unit0.data(), kV, kMaxSeq, kC), g,
                    x.data(), targets.data(), acts, dln.data(), dx.data());
  const auto p = ly::embed_tensors(unit0.data(), kV, kMaxSeq, kC);
  expect_gradient("head dx", x.data(), dx.data(), x.size(), f, kLayerTol);
  expect_gradient("head wte", p.wte, g.wte, static_cast<size_t>(kV) * kC, f, kLayerTol);
  expect_gradient("head lnf_w", p.lnf_w, g.lnf_w, kC, f, kLayerTol);
  expect_gradient("head lnf_b", p.lnf_b, g.lnf_b, kC, f, kLayerTol);
}

// --- whole model -----------------------------------------------------------------------

GptConfig small_config() {
  GptConfig cfg;
  cfg.layers = 2;
  cfg.heads = kHeads;
  cfg.channels = kC;
  cfg.vocab = kV;
  cfg.max_seq = 7;
  return cfg;
}

struct Model {
  explicit Model(const GptConfig& cfg, bool gpt2_init = false, uint64_t seed = 61) : gpt(cfg) {
    for (int u = 0; u < gpt.num_units(); ++u) {
      if (gpt2_init) {
        params.emplace_back(gpt.unit_numel(u));
        gpt.init_unit(u, seed, params.back().data());
      } else {
        params.push_back(u == 0 ? random_unit0(seed, cfg.vocab, cfg.max_seq, cfg.channels)
                                : random_block(seed + u, cfg.channels));
      }
      grads.emplace_back(gpt.unit_numel(u), NAN);  // every gradient must be written
    }
  }
  std::vector<const float*> units() const {
    std::vector<const float*> u;
    for (const auto& p : params) u.push_back(p.data());
    return u;
  }
  std::vector<float*> grad_ptrs() {
    std::vector<float*> g;
    for (auto& p : grads) g.push_back(p.data());
    return g;
  }
  float run(const std::vector<int32_t>& in, const std::vector<int32_t>& tgt, int batch, int t,
            bool recompute, bool with_grads = true) {
    std::vector<float*> g = grad_ptrs();
    return mics::model::gpt_forward_backward(gpt, units(), with_grads ? &g : nullptr, in.data(),
                                             tgt.data(), batch, t, recompute);
  }
  Gpt gpt;
  std::vector<std::vector<float>> params, grads;
};

TEST(GptModel, LossAndGradientsMatchFiniteDifferences) {
  Model m(small_config());
  const auto in = random_tokens(kN, 62, kV), tgt = random_tokens(kN, 63, kV);
  m.run(in, tgt, kB, kT, /*recompute=*/false);
  auto f = [&] { return static_cast<double>(m.run(in, tgt, kB, kT, false, false)); };
  const auto u0 = ly::embed_tensors(m.params[0].data(), kV, 7, kC);
  const auto g0 = ly::embed_tensors(m.grads[0].data(), kV, 7, kC);
  expect_gradient("model wte", u0.wte, g0.wte, static_cast<size_t>(kV) * kC, f, kModelTol, kModelH);
  // Only the first T rows of wpe are used; the rest must have a zero gradient.
  expect_gradient("model wpe", u0.wpe, g0.wpe, static_cast<size_t>(kT) * kC, f, kModelTol, kModelH);
  for (int i = kT * kC; i < 7 * kC; ++i) EXPECT_EQ(g0.wpe[i], 0.0f);
  expect_gradient("model lnf_w", u0.lnf_w, g0.lnf_w, kC, f, kModelTol, kModelH);
  for (int u = 1; u < m.gpt.num_units(); ++u) {
    const auto p = ly::block_tensors(m.params[u].data(), kC);
    const auto g = ly::block_tensors(m.grads[u].data(), kC);
    const std::string unit = m.gpt.unit_name(u);
    expect_gradient(unit + " ln1_w", p.ln1_w, g.ln1_w, kC, f, kModelTol, kModelH);
    expect_gradient(unit + " qkv_w", p.qkv_w, g.qkv_w, 3 * kC * kC, f, kModelTol, kModelH);
    expect_gradient(unit + " proj_w", p.proj_w, g.proj_w, kC * kC, f, kModelTol, kModelH);
    expect_gradient(unit + " ln2_b", p.ln2_b, g.ln2_b, kC, f, kModelTol, kModelH);
    expect_gradient(unit + " fc_w", p.fc_w, g.fc_w, 4 * kC * kC, f, kModelTol, kModelH);
    expect_gradient(unit + " fcproj_b", p.fcproj_b, g.fcproj_b, kC, f, kModelTol, kModelH);
  }
}

}  // namespace
