// Gpt (units, initialisation, memory), GptPass (one micro-batch's activations, unit by unit)
// and the process-wide compute thread count.
#include "model/gpt.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numbers>
#include <thread>

#include "base/error.hpp"
#include "model/gpt_kernels.hpp"
#include "model/gpt_layers.hpp"

extern "C" void openblas_set_num_threads(int);

namespace mics::model {

namespace {

using layers::BlockTensors;
using layers::Dims;
using layers::EmbedTensors;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A standard normal from (seed, unit, index) by Box-Muller on two hashed uniforms: every
// element is a pure function of its coordinates, so any rank and thread count agree.
float hash_normal(uint64_t seed, uint64_t unit, uint64_t index) {
  const uint64_t key = splitmix64(seed ^ splitmix64(unit + 0x632be59bd9b4e019ULL));
  const uint64_t a = splitmix64(key + 2 * index), b = splitmix64(key + 2 * index + 1);
  const double u1 = static_cast<double>((a >> 11) + 1) * 0x1.0p-53;  // (0, 1]: log is finite
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
}

void fill_normal(float* out, size_t count, float stddev, uint64_t seed, int unit,
                 size_t first_index) {
  const auto n = static_cast<int64_t>(count);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    out[i] = stddev *
             hash_normal(seed, static_cast<uint64_t>(unit), first_index + static_cast<size_t>(i));
}

void fill(float* out, size_t count, float value) {
  std::fill(out, out + count, value);
}

struct PassSizes {
  size_t tokens;         // int32 entries: inputs and targets
  size_t residual;       // floats: the residual stream, L+1 rows of [N, C]
  size_t block_acts;     // floats: every block's kept activations (one block's with recompute)
  size_t head_acts;      // floats
  size_t dresid;         // floats
  size_t block_scratch;  // floats
  uint64_t bytes() const {
    return tokens * sizeof(int32_t) +
           (residual + block_acts + head_acts + dresid + block_scratch) * sizeof(float);
  }
};

PassSizes pass_sizes(const GptConfig& cfg, int batch, int seq_len, bool recompute) {
  const Dims d{batch, seq_len, cfg.channels, cfg.heads};
  const size_t nc = d.rows() * static_cast<size_t>(cfg.channels);
  PassSizes s;
  s.tokens = 2 * d.rows();
  s.residual = static_cast<size_t>(cfg.layers + 1) * nc;
  s.block_acts =
      static_cast<size_t>(recompute ? 1 : cfg.layers) * layers::block_activation_floats(d);
  s.head_acts = layers::head_activation_floats(d, cfg.vocab);
  s.dresid = nc;
  s.block_scratch = layers::block_scratch_floats(d);
  return s;
}

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return std::max(1u, std::thread::hardware_concurrency());
}

std::atomic<int> g_compute_threads{0};

}  // namespace

// --- Gpt ---------------------------------------------------------------------------------

Gpt::Gpt(GptConfig config) : config_(config) {
  config_.validate();
}

size_t Gpt::unit_numel(int unit) const {
  MICS_CHECK(unit >= 0 && unit < num_units(), "unit index out of range");
  if (unit == 0) return layers::embed_numel(config_.vocab, config_.max_seq, config_.channels);
  return layers::block_numel(config_.channels);
}

std::string Gpt::unit_name(int unit) const {
  MICS_CHECK(unit >= 0 && unit < num_units(), "unit index out of range");
  return unit == 0 ? "embed" : fmt::format("block.{}", unit - 1);
}

void Gpt::init_unit(int unit, uint64_t seed, float* params) const {
  MICS_CHECK(unit >= 0 && unit < num_units(), "unit index out of range");
  const size_t c = static_cast<size_t>(config_.channels);
  // Each tensor draws from its own index range (its offset in the unit), so no two tensors
  // share random numbers.
  auto normal = [&](float* base, float* tensor, size_t count, float stddev) {
    fill_normal(tensor, count, stddev, seed, unit, static_cast<size_t>(tensor - base));
  };
  if (unit == 0) {
    const auto t = layers::embed_tensors(params, config_.vocab, config_.max_seq, config_.channels);
    normal(params, t.wte, static_cast<size_t>(config_.vocab) * c, 0.02f);
    normal(params, t.wpe, static_cast<size_t>(config_.max_seq) * c, 0.01f);
    fill(t.lnf_w, c, 1.0f);
    fill(t.lnf_b, c, 0.0f);
    return;
  }
  // The residual projections are scaled down so the residual stream's variance does not grow
  // with depth (GPT-2's 1/sqrt(2L)).
  const float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(config_.layers));
  const auto t = layers::block_tensors(params, config_.channels);
  fill(t.ln1_w, c, 1.0f);
  fill(t.ln1_b, c, 0.0f);
  normal(params, t.qkv_w, 3 * c * c, 0.02f);
  fill(t.qkv_b, 3 * c, 0.0f);
  normal(params, t.proj_w, c * c, residual_std);
  fill(t.proj_b, c, 0.0f);
  fill(t.ln2_w, c, 1.0f);
  fill(t.ln2_b, c, 0.0f);
  normal(params, t.fc_w, 4 * c * c, 0.02f);
  fill(t.fc_b, 4 * c, 0.0f);
  normal(params, t.fcproj_w, 4 * c * c, residual_std);
  fill(t.fcproj_b, c, 0.0f);
}

uint64_t Gpt::activation_bytes(int batch, int seq_len, bool recompute) const {
  return pass_sizes(config_, batch, seq_len, recompute).bytes();
}

// --- GptPass -----------------------------------------------------------------------------

struct GptPass::Impl {
  Impl(const Gpt& model, int batch, int seq_len, bool recompute_blocks)
      : cfg(model.config()),
        dims{batch, seq_len, cfg.channels, cfg.heads},
        recompute(recompute_blocks) {
    const PassSizes s = pass_sizes(cfg, batch, seq_len, recompute);
    inputs.resize(s.tokens / 2);
    targets.resize(s.tokens / 2);
    residual.resize(s.residual);
    block_acts.resize(s.block_acts);
    head_acts.resize(s.head_acts);
    dresid.resize(s.dresid);
    block_scratch.resize(s.block_scratch);
    head = layers::head_activations(head_acts.data(), dims, cfg.vocab);
    scratch = layers::block_scratch(block_scratch.data(), dims);
  }

  float* residual_at(int layer) {
    return residual.data() + static_cast<size_t>(layer) * dims.rows() * dims.channels;
  }
  // With recompute every block shares one set of activations.
  layers::BlockActivations acts(int layer) {
    const size_t per_block = layers::block_activation_floats(dims);
    return layers::block_activations(
        block_acts.data() + (recompute ? 0 : static_cast<size_t>(layer) * per_block), dims);
  }
  EmbedTensors<const float> unit0(const float* p) const {
    return layers::embed_tensors(p, cfg.vocab, cfg.max_seq, cfg.channels);
  }
  EmbedTensors<float> unit0(float* p) const {
    return layers::embed_tensors(p, cfg.vocab, cfg.max_seq, cfg.channels);
  }
  void check_layer(int layer) const {
    MICS_CHECK(layer >= 0 && layer < cfg.layers, "block layer index out of range");
  }

  GptConfig cfg;
  Dims dims;
  bool recompute;
  bool has_targets = false;
  int shared_acts_layer = -1;  // with recompute: whose activations the shared set holds
  std::vector<int32_t> inputs, targets;
  std::vector<float> residual, block_acts, head_acts, dresid, block_scratch;
  layers::HeadActivations head{};
  layers::BlockScratch scratch{};
};

GptPass::GptPass(const Gpt& gpt, int batch, int seq_len, bool recompute) {
  const GptConfig& cfg = gpt.config();
  if (batch < 1 || seq_len < 1 || seq_len > cfg.max_seq)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("a micro-batch of {} x {} tokens does not fit a model of context {}",
                            batch, seq_len, cfg.max_seq),
                {.layer = "model",
                 .where = "sizing the GPT activations",
                 .hint = fmt::format("use batch >= 1 and 1 <= seq_len <= {}", cfg.max_seq)});
  impl_ = new Impl(gpt, batch, seq_len, recompute);
}

GptPass::~GptPass() {
  delete impl_;
}

void GptPass::set_tokens(const int32_t* inputs, const int32_t* targets) {
  Impl& m = *impl_;
  const size_t n = m.dims.rows();
  auto copy_checked = [&](const int32_t* from, std::vector<int32_t>& to, const char* what) {
    for (size_t i = 0; i < n; ++i) {
      if (from[i] < 0 || from[i] >= m.cfg.vocab)
        throw Error(ErrorKind::kInvalidArgument,
                    fmt::format("{} token {} at position {} is outside the vocabulary of {}", what,
                                from[i], i, m.cfg.vocab),
                    {.layer = "model",
                     .where = "setting the GPT micro-batch",
                     .hint = "the data set's vocabulary must fit the model's (V)"});
      to[i] = from[i];
    }
  };
  copy_checked(inputs, m.inputs, "input");
  m.has_targets = targets != nullptr;
  if (targets) copy_checked(targets, m.targets, "target");
}

void GptPass::embed_forward(const float* unit0) {
  Impl& m = *impl_;
  const auto p = m.unit0(unit0);
  kernels::embedding_forward(m.inputs.data(), p.wte, p.wpe, m.residual_at(0), m.dims.batch,
                             m.dims.seq_len, m.dims.channels);
}

void GptPass::block_forward(int layer, const float* block) {
  Impl& m = *impl_;
  m.check_layer(layer);
  layers::block_forward(m.dims, layers::block_tensors(block, m.cfg.channels), m.residual_at(layer),
                        m.acts(layer), m.residual_at(layer + 1));
  m.shared_acts_layer = layer;
}

float GptPass::head_forward(const float* unit0) {
  Impl& m = *impl_;
  return layers::head_forward(m.dims, m.cfg.vocab, m.unit0(unit0), m.residual_at(m.cfg.layers),
                              m.has_targets ? m.targets.data() : nullptr, m.head);
}

const float* GptPass::logits() const {
  return impl_->head.logits;
}

void GptPass::head_backward(const float* unit0, float* grad0) {
  Impl& m = *impl_;
  MICS_CHECK(m.has_targets, "head_backward needs targets (set_tokens)");
  const auto g = m.unit0(grad0);
  // The head writes wte and the final LayerNorm; wpe's gradient comes from embed_backward.
  std::fill(g.wpe, g.wpe + static_cast<size_t>(m.cfg.max_seq) * m.cfg.channels, 0.0f);
  layers::head_backward(m.dims, m.cfg.vocab, m.unit0(unit0), g, m.residual_at(m.cfg.layers),
                        m.targets.data(), m.head, m.scratch.dln, m.dresid.data());
}

void GptPass::block_backward(int layer, const float* block, float* grad) {
  Impl& m = *impl_;
  m.check_layer(layer);
  const auto p = layers::block_tensors(block, m.cfg.channels);
  const auto acts = m.acts(layer);
  if (m.recompute && m.shared_acts_layer != layer) {
    // The same forward code on the same input: the activations are bit-identical to those of
    // block_forward. Its output (equal to residual layer+1) goes to scratch that is free now.
    layers::block_forward(m.dims, p, m.residual_at(layer), acts, m.scratch.dln);
    m.shared_acts_layer = layer;
  }
  layers::block_backward(m.dims, p, layers::block_tensors(grad, m.cfg.channels),
                         m.residual_at(layer), acts, m.scratch, m.dresid.data());
}

void GptPass::embed_backward(const float* unit0, float* grad0) {
  Impl& m = *impl_;
  (void)unit0;  // the embedding's gradient does not depend on its parameters
  const auto g = m.unit0(grad0);
  kernels::embedding_backward(m.inputs.data(), m.dresid.data(), g.wte, g.wpe, m.dims.batch,
                              m.dims.seq_len, m.dims.channels);
}

uint64_t GptPass::activation_bytes() const {
  const Impl& m = *impl_;
  return (m.inputs.size() + m.targets.size()) * sizeof(int32_t) +
         (m.residual.size() + m.block_acts.size() + m.head_acts.size() + m.dresid.size() +
          m.block_scratch.size()) *
             sizeof(float);
}

// --- whole model -------------------------------------------------------------------------

float gpt_forward_backward(const Gpt& gpt, const std::vector<const float*>& units,
                           std::vector<float*>* grads, const int32_t* inputs,
                           const int32_t* targets, int batch, int seq_len, bool recompute) {
  const int num_layers = gpt.config().layers;
  MICS_CHECK(static_cast<int>(units.size()) == gpt.num_units(), "one parameter array per unit");
  MICS_CHECK(!grads || static_cast<int>(grads->size()) == gpt.num_units(),
             "one gradient array per unit");
  MICS_CHECK(!grads || targets, "gradients need targets");
  GptPass pass(gpt, batch, seq_len, recompute);
  pass.set_tokens(inputs, targets);
  pass.embed_forward(units[0]);
  for (int l = 0; l < num_layers; ++l) pass.block_forward(l, units[l + 1]);
  const float loss = pass.head_forward(units[0]);
  if (!grads) return loss;
  pass.head_backward(units[0], (*grads)[0]);
  for (int l = num_layers - 1; l >= 0; --l) pass.block_backward(l, units[l + 1], (*grads)[l + 1]);
  pass.embed_backward(units[0], (*grads)[0]);
  return loss;
}

// --- threads -----------------------------------------------------------------------------

void set_compute_threads(int threads) {
  if (threads < 0)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("compute threads must be >= 0 (0: one per core), not {}", threads),
                {.layer = "model", .where = "setting the compute threads", .hint = ""});
  g_compute_threads = threads;
  const int effective = threads > 0 ? threads : usable_cores();
  omp_set_num_threads(effective);
  openblas_set_num_threads(effective);
}

int compute_threads() {
  const int threads = g_compute_threads;
  return threads > 0 ? threads : usable_cores();
}

}  // namespace mics::model
