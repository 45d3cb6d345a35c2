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
// (bound kModelTol = 2e-3), margins of about 5-10x. Every check is double-checked: the same
// comparison must FAIL when the analytic gradient's largest entry is off by 5% or one whole tensor
// has its sign flipped, so a bound loose enough to hide a wrong sign or a dropped term would be
// caught here.
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

extern "C" void openblas_set_num_threads(int);  // OpenBLAS's own threads (cblas.h declares it too)

namespace {

namespace kn = mics::model::kernels;
namespace ly = mics::model::layers;
using mics::model::Gpt;
using mics::model::GptConfig;
using mics::model::GptPass;
using mics::model::hash_uniform;

constexpr double kH = 1e-2;         // layers and the head
constexpr double kModelH = 5e-3;    // the whole model: more curvature, a smaller step
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
  kn::attention_backward(r.data(), qkv.data(), att.data(), dqkv.data(), scratch.data(), kB, kT, kC,
                         kHeads);
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
  std::vector<float> proj_w = random_vector(kC * kF, 24, 0.3f),
                     proj_b = random_vector(kC, 25, 0.5f);
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
  kn::linear_backward(r.data(), g.data(), proj_w.data(), dg.data(), dproj_w.data(), dproj_b.data(),
                      kN, kF, kC);
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
      {"block ln1_w", p.ln1_w, g.ln1_w, c},
      {"block ln1_b", p.ln1_b, g.ln1_b, c},
      {"block qkv_w", p.qkv_w, g.qkv_w, 3 * c * c},
      {"block qkv_b", p.qkv_b, g.qkv_b, 3 * c},
      {"block proj_w", p.proj_w, g.proj_w, c * c},
      {"block proj_b", p.proj_b, g.proj_b, c},
      {"block ln2_w", p.ln2_w, g.ln2_w, c},
      {"block ln2_b", p.ln2_b, g.ln2_b, c},
      {"block fc_w", p.fc_w, g.fc_w, 4 * c * c},
      {"block fc_b", p.fc_b, g.fc_b, 4 * c},
      {"block fcproj_w", p.fcproj_w, g.fcproj_w, 4 * c * c},
      {"block fcproj_b", p.fcproj_b, g.fcproj_b, c}};
  for (const auto& [name, value, gradient, count] : tensors)
    expect_gradient(name, value, gradient, count, f, kLayerTol);
}

TEST(GptLayers, EmbeddingBackwardMatchesFiniteDifferences) {
  constexpr int kMaxSeq = 7;  // wpe has rows past T that must get no gradient
  std::vector<int32_t> tokens = random_tokens(kN, 41, kV);
  tokens[3] = tokens[7] = tokens[8] = 4;  // repeated tokens accumulate
  std::vector<float> wte = random_vector(kV * kC, 42, 0.5f),
                     wpe = random_vector(kMaxSeq * kC, 43, 0.5f);
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
    return static_cast<double>(
        ly::head_forward(d, kV, ly::embed_tensors<const float>(unit0.data(), kV, kMaxSeq, kC),
                         x.data(), targets.data(), acts));
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

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The engine's schedule, unit by unit, on parameters copied into fresh buffers for every call
// (as gathered shards would be) and gradients that start as NaN: the same bits as the helper.
TEST(GptModel, UnitByUnitPassEqualsWholeModel) {
  for (const bool recompute : {false, true}) {
    Model m(small_config());
    const auto in = random_tokens(kN, 71, kV), tgt = random_tokens(kN, 72, kV);
    const float loss = m.run(in, tgt, kB, kT, recompute);

    const int L = m.gpt.config().layers;
    std::vector<std::vector<float>> grads;
    for (int u = 0; u < m.gpt.num_units(); ++u) grads.emplace_back(m.gpt.unit_numel(u), NAN);
    auto gathered = [&](int unit) { return std::vector<float>(m.params[unit]); };
    GptPass pass(m.gpt, kB, kT, recompute);
    pass.set_tokens(in.data(), tgt.data());
    pass.embed_forward(gathered(0).data());
    for (int l = 0; l < L; ++l) pass.block_forward(l, gathered(l + 1).data());
    const float pass_loss = pass.head_forward(gathered(0).data());
    pass.head_backward(gathered(0).data(), grads[0].data());
    for (int l = L - 1; l >= 0; --l)
      pass.block_backward(l, gathered(l + 1).data(), grads[l + 1].data());
    pass.embed_backward(gathered(0).data(), grads[0].data());

    EXPECT_EQ(std::memcmp(&loss, &pass_loss, sizeof loss), 0) << loss << " vs " << pass_loss;
    for (int u = 0; u < m.gpt.num_units(); ++u)
      EXPECT_TRUE(same_bits(grads[u], m.grads[u]))
          << m.gpt.unit_name(u) << " recompute " << recompute;
  }
}

TEST(GptModel, RecomputeGivesTheSameBitsWithLessMemory) {
  GptConfig cfg = small_config();
  cfg.layers = 3;
  Model plain(cfg), recomputed(cfg);
  const auto in = random_tokens(kN, 81, kV), tgt = random_tokens(kN, 82, kV);
  const float loss = plain.run(in, tgt, kB, kT, false);
  const float loss_r = recomputed.run(in, tgt, kB, kT, true);
  EXPECT_EQ(std::memcmp(&loss, &loss_r, sizeof loss), 0);
  for (int u = 0; u < plain.gpt.num_units(); ++u)
    EXPECT_TRUE(same_bits(plain.grads[u], recomputed.grads[u])) << plain.gpt.unit_name(u);

  // The model's estimate is exactly what a pass allocates, for both modes and several sizes.
  for (const auto& [batch, t] : {std::pair{2, 5}, std::pair{1, 7}, std::pair{3, 1}})
    for (const bool recompute : {false, true}) {
      GptPass pass(plain.gpt, batch, t, recompute);
      EXPECT_EQ(plain.gpt.activation_bytes(batch, t, recompute), pass.activation_bytes())
          << batch << "x" << t << " recompute " << recompute;
    }
  EXPECT_LT(plain.gpt.activation_bytes(kB, kT, true), plain.gpt.activation_bytes(kB, kT, false));
  // With recompute only one block keeps its internals: the saving is (L-1) blocks' worth.
  const ly::Dims d{kB, kT, kC, kHeads};
  EXPECT_EQ(plain.gpt.activation_bytes(kB, kT, false) - plain.gpt.activation_bytes(kB, kT, true),
            (cfg.layers - 1) * ly::block_activation_floats(d) * sizeof(float));
}

// Every loop of ours is split by output column, so with OpenBLAS held to one thread, 1 and 2
// OpenMP threads give the same bits. OpenBLAS's own threading may change a GEMM's summation
// order: 0.3.21's Haswell kernels do (chosen on an AMD EPYC with AVX-512: 1 and 2 threads differ
// in the last bits of the embed and block gradients), its SkylakeX kernels do not; with it the
// runs agree to float rounding. The size is large enough for OpenBLAS to use its threads (the
// head's GEMM is 512 x 2048 x 128).
TEST(GptModel, ThreadCountDoesNotChangeResults) {
  const GptConfig cfg = GptConfig::from_name("L1H4C128V2048T128");
  Model one(cfg, /*gpt2_init=*/true), two(cfg, /*gpt2_init=*/true), blas_two(cfg, /*gpt2_init=*/true);
  const int batch = 4, t = 128;
  const auto in = random_tokens(batch * t, 91, cfg.vocab),
             tgt = random_tokens(batch * t, 92, cfg.vocab);
  mics::model::set_compute_threads(1);
  EXPECT_EQ(mics::model::compute_threads(), 1);
  const float loss1 = one.run(in, tgt, batch, t, false);
  mics::model::set_compute_threads(2);
  EXPECT_EQ(mics::model::compute_threads(), 2);
  openblas_set_num_threads(1);
  const float loss2 = two.run(in, tgt, batch, t, false);
  EXPECT_EQ(std::memcmp(&loss1, &loss2, sizeof loss1), 0) << loss1 << " vs " << loss2;
  for (int u = 0; u < one.gpt.num_units(); ++u)
    EXPECT_TRUE(same_bits(one.grads[u], two.grads[u])) << one.gpt.unit_name(u);
  mics::model::set_compute_threads(2);  // OpenBLAS with two threads as well
  const float loss3 = blas_two.run(in, tgt, batch, t, false);
  mics::model::set_compute_threads(0);
  EXPECT_GE(mics::model::compute_threads(), 1);
  EXPECT_NEAR(loss3, loss1, 1e-6 * loss1);
  for (int u = 0; u < one.gpt.num_units(); ++u) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < one.grads[u].size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(blas_two.grads[u][i] - one.grads[u][i])));
      scale = std::max(scale, static_cast<double>(std::fabs(one.grads[u][i])));
    }
    EXPECT_LE(worst, 1e-5 * scale) << one.gpt.unit_name(u) << ": " << worst << " of " << scale;
  }
}

// At GPT-2's initialisation the logits are small, so the loss on random tokens is near ln V.
TEST(GptModel, InitialLossIsNearLogVocab) {
  const GptConfig cfg = GptConfig::from_name("tiny");
  Model m(cfg, /*gpt2_init=*/true, 7);
  const int batch = 4, t = cfg.max_seq;
  const auto in = random_tokens(batch * t, 101, cfg.vocab),
             tgt = random_tokens(batch * t, 102, cfg.vocab);
  const float loss = m.run(in, tgt, batch, t, false, false);
  // Logits have a std of about 0.02 * sqrt(C) = 0.16: the loss exceeds ln V by about
  // var/2 = 0.013 plus sampling noise.
  EXPECT_NEAR(loss, std::log(static_cast<double>(cfg.vocab)), 0.05);
}

// init_unit: the same numbers for the same (seed, unit), GPT-2's scales, any thread count.
TEST(GptModel, InitIsDeterministicWithGpt2Scales) {
  GptConfig cfg = GptConfig::from_name("L4H4C64V512T128");
  const Gpt gpt(cfg);
  auto init = [&](int unit, uint64_t seed) {
    std::vector<float> p(gpt.unit_numel(unit));
    gpt.init_unit(unit, seed, p.data());
    return p;
  };
  mics::model::set_compute_threads(1);
  const auto block_1thread = init(2, 5);
  mics::model::set_compute_threads(2);
  EXPECT_TRUE(same_bits(block_1thread, init(2, 5)));
  mics::model::set_compute_threads(0);
  EXPECT_FALSE(same_bits(block_1thread, init(2, 6)));  // another seed
  EXPECT_FALSE(same_bits(block_1thread, init(3, 5)));  // another unit

  auto stddev = [](const float* v, size_t n) {
    double sum = 0, squares = 0;
    for (size_t i = 0; i < n; ++i) {
      sum += v[i];
      squares += static_cast<double>(v[i]) * v[i];
    }
    const double mean = sum / n;
    return std::sqrt(squares / n - mean * mean);
  };
  const size_t c = 64;
  const auto u0 = init(0, 5);
  const auto e = ly::embed_tensors(u0.data(), cfg.vocab, cfg.max_seq, cfg.channels);
  EXPECT_NEAR(stddev(e.wte, cfg.vocab * c), 0.02, 0.001);
  EXPECT_NEAR(stddev(e.wpe, cfg.max_seq * c), 0.01, 0.0005);
  EXPECT_EQ(e.lnf_w[3], 1.0f);
  EXPECT_EQ(e.lnf_b[3], 0.0f);
  const auto b = ly::block_tensors(block_1thread.data(), cfg.channels);
  EXPECT_NEAR(stddev(b.qkv_w, 3 * c * c), 0.02, 0.001);
  EXPECT_NEAR(stddev(b.fc_w, 4 * c * c), 0.02, 0.001);
  const double residual_std = 0.02 / std::sqrt(2.0 * cfg.layers);
  EXPECT_NEAR(stddev(b.fcproj_w, 4 * c * c), residual_std, 0.05 * residual_std);
  EXPECT_NEAR(stddev(b.proj_w, c * c), residual_std, 0.1 * residual_std);
  EXPECT_EQ(b.ln1_w[0], 1.0f);
  EXPECT_EQ(b.ln2_w[c - 1], 1.0f);
  EXPECT_EQ(b.qkv_b[0], 0.0f);
  EXPECT_EQ(b.fcproj_b[c - 1], 0.0f);
}

// --- configuration ---------------------------------------------------------------------

// GPT-2's parameter count from the architecture: wte + wpe + final LayerNorm, and per block
// two LayerNorms (4C), qkv (3C^2 + 3C), proj (C^2 + C), fc (4C^2 + 4C), fcproj (4C^2 + C).
size_t expected_params(size_t L, size_t C, size_t V, size_t T) {
  const size_t block =
      4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C);
  return V * C + T * C + 2 * C + L * block;
}

TEST(GptConfig, PresetsHaveGpt2Sizes) {
  const auto m124 = GptConfig::from_name("gpt2-124m");
  EXPECT_EQ(m124.num_params(), 124439808u);  // llm.c's count, head tied to wte
  EXPECT_EQ(m124.describe(), "L12 H12 C768 V50257 T1024 (124.4M params)");
  struct Expected {
    const char* name;
    size_t L, H, C;
  };
  for (const Expected& e :
       {Expected{"gpt2-124m", 12, 12, 768}, Expected{"gpt2-350m", 24, 16, 1024},
        Expected{"gpt2-774m", 36, 20, 1280}, Expected{"gpt2-1.5b", 48, 25, 1600}}) {
    const auto cfg = GptConfig::from_name(e.name);
    EXPECT_EQ(static_cast<size_t>(cfg.layers), e.L) << e.name;
    EXPECT_EQ(static_cast<size_t>(cfg.heads), e.H) << e.name;
    EXPECT_EQ(static_cast<size_t>(cfg.channels), e.C) << e.name;
    EXPECT_EQ(cfg.vocab, 50257) << e.name;
    EXPECT_EQ(cfg.max_seq, 1024) << e.name;
    EXPECT_EQ(cfg.num_params(), expected_params(e.L, e.C, 50257, 1024)) << e.name;
    // The units partition the parameters.
    const Gpt gpt(cfg);
    size_t total = 0;
    for (int u = 0; u < gpt.num_units(); ++u) total += gpt.unit_numel(u);
    EXPECT_EQ(total, cfg.num_params()) << e.name;
  }
  const auto tiny = GptConfig::from_name("tiny");
  EXPECT_EQ(tiny.num_params(), expected_params(2, 64, 256, 64));
  EXPECT_DOUBLE_EQ(m124.flops_per_token(1024), 6.0 * 124439808 + 6.0 * 12 * 768 * 1024);
  const Gpt gpt(tiny);
  EXPECT_EQ(gpt.unit_name(0), "embed");
  EXPECT_EQ(gpt.unit_name(2), "block.1");
}

TEST(GptConfig, FreeSizesAndErrors) {
  const auto cfg = GptConfig::from_name("L3H2C16");
  EXPECT_EQ(cfg.layers, 3);
  EXPECT_EQ(cfg.heads, 2);
  EXPECT_EQ(cfg.channels, 16);
  EXPECT_EQ(cfg.vocab, 256);  // from tiny
  EXPECT_EQ(cfg.max_seq, 64);
  const auto full = GptConfig::from_name("T32V1000C48H3L1");
  EXPECT_EQ(full.max_seq, 32);
  EXPECT_EQ(full.vocab, 1000);

  auto expect_invalid = [](const std::string& name, const std::string& in_message) {
    try {
      GptConfig::from_name(name);
      ADD_FAILURE() << name << " was accepted";
    } catch (const mics::Error& e) {
      EXPECT_EQ(e.kind(), mics::ErrorKind::kInvalidArgument) << name;
      EXPECT_NE(std::string(e.what()).find(in_message), std::string::npos) << e.what();
      EXPECT_FALSE(e.context().hint.empty()) << name;
    }
  };
  for (const char* bad : {"gpt2-125m", "", "L", "L2L3", "X5", "L2H"}) {
    expect_invalid(bad, "unknown GPT model");
    try {
      GptConfig::from_name(bad);
    } catch (const mics::Error& e) {
      for (const auto& preset : GptConfig::preset_names())
        EXPECT_NE(e.message().find(preset), std::string::npos) << preset;
    }
  }
  expect_invalid("C10H3", "heads");
  expect_invalid("L0", ">= 1");
  EXPECT_THROW(Gpt(GptConfig{2, 3, 8, 11, 7}), mics::Error);
  EXPECT_THROW(GptPass(Gpt(small_config()), 1, 8, false), mics::Error);  // T > max_seq
}

}  // namespace
