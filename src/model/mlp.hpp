#pragma once
// A small MLP stack on the CPU, for driving and testing the sharded engine.
//
// Layer l maps in_l = sizes[l] features to out_l = sizes[l+1]: y = gelu(x W^T + b), the last
// layer linear. Each layer is one unit: W [out, in] row-major then b [out], packed into ONE
// flat float array of out*in + out elements. The code takes parameter pointers per layer, so it
// runs the same on parameters gathered by the engine or on a local full copy.
//
// Loss: mean squared error against a target [B, out], the mean over B*out elements.
//
// Everything is deterministic: parameters from (seed, layer, index), and the synthetic data
// set is a fixed random "teacher" function of the sample's global index, so every rank builds
// any micro-batch by itself (see sample_index for the global batch layout).
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mics::model {

// A float in [-1, 1) from a hash of (seed, a, b): the source of every random number here.
float hash_uniform(uint64_t seed, uint64_t a, uint64_t b);

class Mlp {
 public:
  // sizes = {in, hidden..., out}: sizes.size() - 1 layers, every size >= 1.
  explicit Mlp(std::vector<int> sizes);

  int num_layers() const { return static_cast<int>(sizes_.size()) - 1; }
  int in_dim(int layer) const { return sizes_[layer]; }
  int out_dim(int layer) const { return sizes_[layer + 1]; }
  int input_dim() const { return sizes_.front(); }
  int output_dim() const { return sizes_.back(); }
  const std::vector<int>& sizes() const { return sizes_; }
  size_t layer_numel(int layer) const;  // out*in + out
  size_t total_numel() const;

  // W ~ U(-1, 1)/sqrt(in), b ~ U(-0.1, 0.1): the same on every rank for the same seed.
  void init_layer(int layer, uint64_t seed, float* params) const;
  std::vector<std::vector<float>> init(uint64_t seed) const;

  // --- layer-wise API (B samples) ---------------------------------------------------------
  // in [B, in_l] -> pre = x W^T + b [B, out_l] and out = gelu(pre) (= pre for the last layer).
  void forward_layer(int layer, const float* params, const float* in, float* pre, float* out,
                     int batch) const;
  // dout = dL/d(out) [B, out_l]. Writes (overwrites) grad [layer_numel] and, unless din is
  // null, din = dL/d(in) [B, in_l]. pre is what forward_layer wrote.
  void backward_layer(int layer, const float* params, const float* in, const float* pre,
                      const float* dout, float* grad, float* din, int batch) const;
  // Mean squared error over batch*out elements; writes dL/d(out) into dout unless null.
  float mse_loss(const float* out, const float* target, float* dout, int batch) const;

  // --- what the kernels above cost (the cost model, plan/model_desc.hpp, sizes from these) ----
  // FLOPs of forward_layer: 2 per multiply-add of x W^T (the bias starts the sum; GELU, a few
  // transcendental calls per output, is not counted).
  double forward_flops(int layer, int batch) const;
  // FLOPs of backward_layer as MlpPass::backward calls it: dW (2 per multiply-add), db (one add
  // per sample and output), and din (2 per multiply-add) for every layer but the first, whose
  // input gradient nobody needs (din is null there). GELU's derivative is not counted.
  double backward_flops(int layer, int batch) const;
  // Bytes of the activations MlpPass keeps for a micro-batch at its peak (the backward): every
  // layer's input and pre-activation, the output, the gradient flowing backward and the one it
  // makes (dout_, din_), and backward_layer's dL/d(pre) scratch, all fp32.
  uint64_t activation_bytes(int batch) const;

  // --- whole model ------------------------------------------------------------------------
  // Loss of the micro-batch and, into grads[l] (layer_numel(l) each), its gradient.
  float forward_backward(const std::vector<const float*>& params, std::vector<float*>& grads,
                         const float* x, const float* y, int batch) const;
  float loss(const std::vector<const float*>& params, const float* x, const float* y,
             int batch) const;

 private:
  std::vector<int> sizes_;
};

// The activations of one micro-batch, for callers that fetch parameters layer by layer (the
// engine driver): forward(0..L-1), loss(), then backward(L-1..0).
class MlpPass {
 public:
  MlpPass(const Mlp& mlp, const float* x, const float* y, int batch);
  void forward(int layer, const float* params);
  float loss();                                                // after the last layer's forward
  void backward(int layer, const float* params, float* grad);  // after loss(), in reverse
  const float* output() const { return acts_.back().data(); }

 private:
  const Mlp& mlp_;
  const float* y_;
  int batch_;
  std::vector<std::vector<float>> acts_;  // acts_[l] = input of layer l; acts_[L] = output
  std::vector<std::vector<float>> pre_;   // pre-activations per layer
  std::vector<float> dout_, din_;         // gradient flowing backward
};

// Synthetic regression data: x ~ U(-1, 1)^in from (seed, index), y = tanh(A x + c) with A, c
// a fixed random teacher drawn from the seed.
class SyntheticData {
 public:
  SyntheticData(int in_dim, int out_dim, uint64_t seed);
  void sample(int64_t index, float* x, float* y) const;
  // Samples first, first+1, ..., first+batch-1 into x [batch, in] and y [batch, out].
  void batch(int64_t first, int batch, std::vector<float>& x, std::vector<float>& y) const;
  int in_dim() const { return in_; }
  int out_dim() const { return out_; }

 private:
  int in_, out_;
  uint64_t seed_;
  std::vector<float> a_, c_;
};

// The global batch of optimizer step `step`: world ranks x micro_steps x batch samples. Rank r's
// micro-batch s holds samples sample_index(step, s, r, 0..batch-1), consecutive.
inline int64_t sample_index(int64_t step, int micro, int rank, int b, int world, int micro_steps,
                            int batch) {
  return ((step * micro_steps + micro) * world + rank) * static_cast<int64_t>(batch) + b;
}

}  // namespace mics::model
