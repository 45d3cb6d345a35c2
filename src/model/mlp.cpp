#include "model/mlp.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "base/error.hpp"

namespace mics::model {

namespace {

uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// Exact GELU, x * Phi(x), and its derivative Phi(x) + x * phi(x); computed in double.
float gelu(float z) {
  const double x = z;
  return static_cast<float>(0.5 * x * (1.0 + std::erf(x * kInvSqrt2)));
}
float gelu_grad(float z) {
  const double x = z;
  return static_cast<float>(0.5 * (1.0 + std::erf(x * kInvSqrt2)) +
                            x * kInvSqrt2Pi * std::exp(-0.5 * x * x));
}

}  // namespace

float hash_uniform(uint64_t seed, uint64_t a, uint64_t b) {
  const uint64_t h = mix(mix(seed ^ 0x9e3779b97f4a7c15ULL) + mix(a * 0x100000001b3ULL + 17) + b);
  return static_cast<float>(static_cast<double>(h >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

Mlp::Mlp(std::vector<int> sizes) : sizes_(std::move(sizes)) {
  MICS_CHECK(sizes_.size() >= 2, "an MLP needs an input and an output size");
  for (int s : sizes_) MICS_CHECK(s >= 1, "layer sizes must be positive");
}

size_t Mlp::layer_numel(int layer) const {
  const size_t in = static_cast<size_t>(in_dim(layer)), out = static_cast<size_t>(out_dim(layer));
  return out * in + out;
}

size_t Mlp::total_numel() const {
  size_t total = 0;
  for (int l = 0; l < num_layers(); ++l) total += layer_numel(l);
  return total;
}

void Mlp::init_layer(int layer, uint64_t seed, float* params) const {
  const int in = in_dim(layer), out = out_dim(layer);
  const float scale = 1.0f / std::sqrt(static_cast<float>(in));
  const size_t weights = static_cast<size_t>(out) * static_cast<size_t>(in);
  for (size_t i = 0; i < weights; ++i)
    params[i] = hash_uniform(seed, static_cast<uint64_t>(layer), i) * scale;
  for (int o = 0; o < out; ++o)
    params[weights + static_cast<size_t>(o)] =
        0.1f *
        hash_uniform(seed, static_cast<uint64_t>(layer) + 1000003ULL, static_cast<uint64_t>(o));
}

std::vector<std::vector<float>> Mlp::init(uint64_t seed) const {
  std::vector<std::vector<float>> params(static_cast<size_t>(num_layers()));
  for (int l = 0; l < num_layers(); ++l) {
    params[l].resize(layer_numel(l));
    init_layer(l, seed, params[l].data());
  }
  return params;
}

void Mlp::forward_layer(int layer, const float* params, const float* in, float* pre, float* out,
                        int batch) const {
  const int ni = in_dim(layer), no = out_dim(layer);
  const float* w = params;
  const float* bias = params + static_cast<size_t>(no) * static_cast<size_t>(ni);
  const bool last = layer == num_layers() - 1;
  for (int b = 0; b < batch; ++b) {
    const float* x = in + static_cast<size_t>(b) * static_cast<size_t>(ni);
    for (int o = 0; o < no; ++o) {
      const float* row = w + static_cast<size_t>(o) * static_cast<size_t>(ni);
      double acc = bias[o];
      for (int i = 0; i < ni; ++i) acc += static_cast<double>(row[i]) * x[i];
      const size_t k = static_cast<size_t>(b) * static_cast<size_t>(no) + static_cast<size_t>(o);
      pre[k] = static_cast<float>(acc);
      out[k] = last ? pre[k] : gelu(pre[k]);
    }
  }
}

void Mlp::backward_layer(int layer, const float* params, const float* in, const float* pre,
                         const float* dout, float* grad, float* din, int batch) const {
  const int ni = in_dim(layer), no = out_dim(layer);
  const size_t nin = static_cast<size_t>(ni), nout = static_cast<size_t>(no);
  const bool last = layer == num_layers() - 1;
  // dpre = dout * gelu'(pre)
  std::vector<float> dpre(static_cast<size_t>(batch) * nout);
  for (size_t k = 0; k < dpre.size(); ++k) dpre[k] = last ? dout[k] : dout[k] * gelu_grad(pre[k]);
  // dW[o][i] = sum_b dpre[b][o] x[b][i]; db[o] = sum_b dpre[b][o]
  float* dw = grad;
  float* db = grad + nout * nin;
  for (size_t o = 0; o < nout; ++o) {
    double bsum = 0;
    for (size_t i = 0; i < nin; ++i) {
      double acc = 0;
      for (int b = 0; b < batch; ++b)
        acc += static_cast<double>(dpre[static_cast<size_t>(b) * nout + o]) *
               in[static_cast<size_t>(b) * nin + i];
      dw[o * nin + i] = static_cast<float>(acc);
    }
    for (int b = 0; b < batch; ++b) bsum += dpre[static_cast<size_t>(b) * nout + o];
    db[o] = static_cast<float>(bsum);
  }
  if (!din) return;
  // din[b][i] = sum_o dpre[b][o] W[o][i]
  for (int b = 0; b < batch; ++b)
    for (size_t i = 0; i < nin; ++i) {
      double acc = 0;
      for (size_t o = 0; o < nout; ++o)
        acc += static_cast<double>(dpre[static_cast<size_t>(b) * nout + o]) * params[o * nin + i];
      din[static_cast<size_t>(b) * nin + i] = static_cast<float>(acc);
    }
}

double Mlp::forward_flops(int layer, int batch) const {
  return 2.0 * static_cast<double>(in_dim(layer)) * out_dim(layer) * batch;
}

double Mlp::backward_flops(int layer, int batch) const {
  const double in = in_dim(layer), out = out_dim(layer), b = batch;
  const double weights = 2.0 * in * out * b, bias = out * b;
  return weights + bias + (layer > 0 ? 2.0 * in * out * b : 0.0);
}

uint64_t Mlp::activation_bytes(int batch) const {
  // acts_ (input + every layer's output) and pre_ (every layer's pre-activation), then the
  // backward's two gradient buffers (each at most the widest layer) and the dpre scratch.
  uint64_t floats = static_cast<uint64_t>(input_dim());
  int widest = input_dim(), widest_out = 0;
  for (int l = 0; l < num_layers(); ++l) {
    floats += 2 * static_cast<uint64_t>(out_dim(l));
    widest = std::max(widest, out_dim(l));
    widest_out = std::max(widest_out, out_dim(l));
  }
  floats += 2 * static_cast<uint64_t>(widest) + static_cast<uint64_t>(widest_out);
  return 4 * floats * static_cast<uint64_t>(batch);
}

float Mlp::mse_loss(const float* out, const float* target, float* dout, int batch) const {
  const size_t n = static_cast<size_t>(batch) * static_cast<size_t>(output_dim());
  double sum = 0;
  for (size_t k = 0; k < n; ++k) {
    const double d = static_cast<double>(out[k]) - target[k];
    sum += d * d;
    if (dout) dout[k] = static_cast<float>(2.0 * d / static_cast<double>(n));
  }
  return static_cast<float>(sum / static_cast<double>(n));
}

float Mlp::forward_backward(const std::vector<const float*>& params, std::vector<float*>& grads,
                            const float* x, const float* y, int batch) const {
  MICS_CHECK(static_cast<int>(params.size()) == num_layers() &&
                 static_cast<int>(grads.size()) == num_layers(),
             "one parameter and one gradient pointer per layer");
  MlpPass pass(*this, x, y, batch);
  for (int l = 0; l < num_layers(); ++l) pass.forward(l, params[l]);
  const float loss_value = pass.loss();
  for (int l = num_layers() - 1; l >= 0; --l) pass.backward(l, params[l], grads[l]);
  return loss_value;
}

float Mlp::loss(const std::vector<const float*>& params, const float* x, const float* y,
                int batch) const {
  MICS_CHECK(static_cast<int>(params.size()) == num_layers(), "one parameter pointer per layer");
  MlpPass pass(*this, x, y, batch);
  for (int l = 0; l < num_layers(); ++l) pass.forward(l, params[l]);
  return mse_loss(pass.output(), y, nullptr, batch);
}

MlpPass::MlpPass(const Mlp& mlp, const float* x, const float* y, int batch)
    : mlp_(mlp), y_(y), batch_(batch) {
  const int L = mlp.num_layers();
  acts_.resize(static_cast<size_t>(L) + 1);
  pre_.resize(static_cast<size_t>(L));
  const size_t b = static_cast<size_t>(batch);
  acts_[0].assign(x, x + b * static_cast<size_t>(mlp.input_dim()));
  for (int l = 0; l < L; ++l) {
    acts_[l + 1].resize(b * static_cast<size_t>(mlp.out_dim(l)));
    pre_[l].resize(b * static_cast<size_t>(mlp.out_dim(l)));
  }
}

void MlpPass::forward(int layer, const float* params) {
  mlp_.forward_layer(layer, params, acts_[layer].data(), pre_[layer].data(),
                     acts_[layer + 1].data(), batch_);
}

float MlpPass::loss() {
  dout_.resize(acts_.back().size());
  return mlp_.mse_loss(acts_.back().data(), y_, dout_.data(), batch_);
}

void MlpPass::backward(int layer, const float* params, float* grad) {
  const size_t in_size = static_cast<size_t>(batch_) * static_cast<size_t>(mlp_.in_dim(layer));
  din_.resize(in_size);
  mlp_.backward_layer(layer, params, acts_[layer].data(), pre_[layer].data(), dout_.data(), grad,
                      layer > 0 ? din_.data() : nullptr, batch_);
  if (layer > 0) dout_.swap(din_);
}

SyntheticData::SyntheticData(int in_dim, int out_dim, uint64_t seed)
    : in_(in_dim), out_(out_dim), seed_(seed) {
  a_.resize(static_cast<size_t>(in_dim) * static_cast<size_t>(out_dim));
  c_.resize(static_cast<size_t>(out_dim));
  const float scale = 2.0f / std::sqrt(static_cast<float>(in_dim));
  for (size_t k = 0; k < a_.size(); ++k) a_[k] = scale * hash_uniform(seed, 1ULL << 40, k);
  for (size_t k = 0; k < c_.size(); ++k) c_[k] = 0.5f * hash_uniform(seed, 1ULL << 41, k);
}

void SyntheticData::sample(int64_t index, float* x, float* y) const {
  const uint64_t row = (1ULL << 42) + static_cast<uint64_t>(index);
  for (int i = 0; i < in_; ++i) x[i] = hash_uniform(seed_, row, static_cast<uint64_t>(i));
  for (int o = 0; o < out_; ++o) {
    double acc = c_[static_cast<size_t>(o)];
    for (int i = 0; i < in_; ++i)
      acc += static_cast<double>(
                 a_[static_cast<size_t>(o) * static_cast<size_t>(in_) + static_cast<size_t>(i)]) *
             x[i];
    y[o] = static_cast<float>(std::tanh(acc));
  }
}

void SyntheticData::batch(int64_t first, int batch, std::vector<float>& x,
                          std::vector<float>& y) const {
  const size_t b = static_cast<size_t>(batch);
  x.resize(b * static_cast<size_t>(in_));
  y.resize(b * static_cast<size_t>(out_));
  for (size_t k = 0; k < b; ++k)
    sample(first + static_cast<int64_t>(k), x.data() + k * static_cast<size_t>(in_),
           y.data() + k * static_cast<size_t>(out_));
}

}  // namespace mics::model
