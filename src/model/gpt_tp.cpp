#include "model/gpt_tp.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.hpp"
#include "model/gpt_kernels.hpp"
#include "model/gpt_layers.hpp"

namespace mics::model {

namespace k = kernels;

namespace {

size_t sz(int v) { return static_cast<size_t>(v); }

// Views of a slice's units (layouts in gpt_tp.hpp).
template <typename F>
struct Split {
  F *qkv_w, *qkv_b, *proj_w, *fc_w, *fc_b, *fcproj_w;
};
template <typename F>
Split<F> split_view(F* p, size_t c, size_t cl) {
  Split<F> s;
  s.qkv_w = p;
  s.qkv_b = s.qkv_w + 3 * cl * c;
  s.proj_w = s.qkv_b + 3 * cl;
  s.fc_w = s.proj_w + c * cl;
  s.fc_b = s.fc_w + 4 * cl * c;
  s.fcproj_w = s.fc_b + 4 * cl;
  return s;
}
template <typename F>
struct Rep {
  F *ln1_w, *ln1_b, *proj_b, *ln2_w, *ln2_b, *fcproj_b;
};
template <typename F>
Rep<F> rep_view(F* p, size_t c) {
  return {p, p + c, p + 2 * c, p + 3 * c, p + 4 * c, p + 5 * c};
}

// Rows [row0, row0 + rows) of a [*, cols] matrix: all columns.
void copy_rows(const float* src, size_t cols, size_t row0, size_t rows, float* dst) {
  std::memcpy(dst, src + row0 * cols, rows * cols * sizeof(float));
}
// Columns [col0, col0 + n) of every row of a [rows, cols] matrix.
void copy_cols(const float* src, size_t rows, size_t cols, size_t col0, size_t n, float* dst) {
  for (size_t r = 0; r < rows; ++r) std::memcpy(dst + r * n, src + r * cols + col0, n * sizeof(float));
}

}  // namespace

size_t tp_split_numel(const GptConfig& c, int t) {
  const size_t C = sz(c.channels), cl = C / sz(t);
  return 12 * C * cl + 7 * cl;
}
size_t tp_rep_numel(const GptConfig& c) { return 6 * sz(c.channels); }
size_t tp_wte_numel(const GptConfig& c, int t) { return sz(c.vocab) / sz(t) * sz(c.channels); }
size_t tp_wpe_numel(const GptConfig& c) { return sz(c.max_seq) * sz(c.channels); }
size_t tp_lnf_numel(const GptConfig& c) { return 2 * sz(c.channels); }

void tp_slice_block(const GptConfig& c, TpSlice slice, const float* full_block, float* split, float* rep) {
  const size_t C = sz(c.channels), cl = C / sz(slice.size), k = sz(slice.rank);
  const auto f = layers::block_tensors(full_block, c.channels);
  const auto s = split_view(split, C, cl);
  for (size_t part = 0; part < 3; ++part) {
    copy_rows(f.qkv_w, C, part * C + k * cl, cl, s.qkv_w + part * cl * C);
    std::memcpy(s.qkv_b + part * cl, f.qkv_b + part * C + k * cl, cl * sizeof(float));
  }
  copy_cols(f.proj_w, C, C, k * cl, cl, s.proj_w);
  copy_rows(f.fc_w, C, k * 4 * cl, 4 * cl, s.fc_w);
  std::memcpy(s.fc_b, f.fc_b + k * 4 * cl, 4 * cl * sizeof(float));
  copy_cols(f.fcproj_w, C, 4 * C, k * 4 * cl, 4 * cl, s.fcproj_w);
  const auto r = rep_view(rep, C);
  std::memcpy(r.ln1_w, f.ln1_w, C * sizeof(float));
  std::memcpy(r.ln1_b, f.ln1_b, C * sizeof(float));
  std::memcpy(r.proj_b, f.proj_b, C * sizeof(float));
  std::memcpy(r.ln2_w, f.ln2_w, C * sizeof(float));
  std::memcpy(r.ln2_b, f.ln2_b, C * sizeof(float));
  std::memcpy(r.fcproj_b, f.fcproj_b, C * sizeof(float));
}

void tp_slice_embed(const GptConfig& c, TpSlice slice, const float* full_unit0, float* wte, float* wpe, float* lnf) {
  const size_t C = sz(c.channels), vl = sz(c.vocab) / sz(slice.size);
  const auto f = layers::embed_tensors(full_unit0, c.vocab, c.max_seq, c.channels);
  if (wte) copy_rows(f.wte, C, sz(slice.rank) * vl, vl, wte);
  if (wpe) std::memcpy(wpe, f.wpe, sz(c.max_seq) * C * sizeof(float));
  if (lnf) {
    std::memcpy(lnf, f.lnf_w, C * sizeof(float));
    std::memcpy(lnf + C, f.lnf_b, C * sizeof(float));
  }
}

std::vector<UnitPiece> tp_unit_pieces(const GptConfig& c, TpSlice slice, TpUnit kind, int layer) {
  const size_t C = sz(c.channels), cl = C / sz(slice.size), k = sz(slice.rank), vl = sz(c.vocab) / sz(slice.size);
  std::vector<UnitPiece> out;
  size_t local = 0;
  const int unit = kind == TpUnit::kSplit || kind == TpUnit::kRep ? 1 + layer : 0;
  auto add = [&](size_t offset, size_t rows, size_t run, size_t stride) {
    if (rows == 1) stride = run;
    UnitPiece* prev = out.empty() ? nullptr : &out.back();
    if (rows == 1 && prev && prev->rows == 1 && prev->local + prev->run == local && prev->offset + prev->run == offset) {
      prev->run += run, prev->stride = prev->run;  // adjacent on both sides: one piece
    } else {
      out.push_back({local, unit, offset, rows, run, stride});
    }
    local += rows * run;
  };
  // Offsets in a block unit (gpt.hpp's order, as layers::block_tensors carves it).
  const size_t ln1_w = 0, qkv_w = 2 * C, qkv_b = qkv_w + 3 * C * C, proj_w = qkv_b + 3 * C, proj_b = proj_w + C * C,
               ln2_w = proj_b + C, fc_w = ln2_w + 2 * C, fc_b = fc_w + 4 * C * C, fcproj_w = fc_b + 4 * C,
               fcproj_b = fcproj_w + 4 * C * C;
  switch (kind) {
    case TpUnit::kWte: add(k * vl * C, 1, vl * C, 0); break;
    case TpUnit::kWpe: add(sz(c.vocab) * C, 1, sz(c.max_seq) * C, 0); break;
    case TpUnit::kLnf: add((sz(c.vocab) + sz(c.max_seq)) * C, 1, 2 * C, 0); break;
    case TpUnit::kSplit:  // the layout of split_view
      for (size_t part = 0; part < 3; ++part) add(qkv_w + (part * C + k * cl) * C, 1, cl * C, 0);
      for (size_t part = 0; part < 3; ++part) add(qkv_b + part * C + k * cl, 1, cl, 0);
      add(proj_w + k * cl, C, cl, C);
      add(fc_w + k * 4 * cl * C, 1, 4 * cl * C, 0);
      add(fc_b + k * 4 * cl, 1, 4 * cl, 0);
      add(fcproj_w + k * 4 * cl, C, 4 * cl, 4 * C);
      break;
    case TpUnit::kRep:  // the layout of rep_view
      add(ln1_w, 1, 2 * C, 0);
      add(proj_b, 1, C, 0);
      add(ln2_w, 1, 2 * C, 0);
      add(fcproj_b, 1, C, 0);
      break;
  }
  return out;
}

struct TpPass::Impl {
  GptConfig c;
  TpSlice slice;
  int B, T, blocks;
  size_t N, C, cl, hl, vl;
  TensorAllReduce all_reduce;
  std::vector<int32_t> inputs, targets;
  std::vector<std::vector<float>> xs;  // xs[i]: input of local block i; xs[blocks]: the output
  struct BlockActs {
    std::vector<float> ln1, ln1_mean, ln1_rstd, qkv, att, atty, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu;
  };
  std::vector<BlockActs> acts;
  // head
  std::vector<float> lnf, lnf_mean, lnf_rstd, logits, lse;
  // scratch
  std::vector<float> tmp, dresid, dln, datty, dqkv, dfch, dscore, stats;

  void reduce(float* data, size_t count, ReduceOp op) {
    if (slice.size > 1) all_reduce(data, count, op);
  }
};

TpPass::TpPass(const GptConfig& c, TpSlice slice, int batch, int seq_len, int blocks, TensorAllReduce all_reduce)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  MICS_CHECK(slice.size >= 1 && c.heads % slice.size == 0 && c.vocab % slice.size == 0,
             "tensor parallel size must divide the heads and the vocabulary");
  s.c = c;
  s.slice = slice;
  s.B = batch;
  s.T = seq_len;
  s.blocks = blocks;
  s.N = sz(batch) * sz(seq_len);
  s.C = sz(c.channels);
  s.cl = s.C / sz(slice.size);
  s.hl = sz(c.heads) / sz(slice.size);
  s.vl = sz(c.vocab) / sz(slice.size);
  s.all_reduce = std::move(all_reduce);
  s.inputs.assign(s.N, 0);
  s.targets.assign(s.N, 0);
  s.xs.assign(sz(blocks) + 1, std::vector<float>(s.N * s.C));
  s.acts.resize(sz(blocks));
  const size_t N = s.N, C = s.C, cl = s.cl;
  for (auto& a : s.acts) {
    a.ln1.resize(N * C), a.ln1_mean.resize(N), a.ln1_rstd.resize(N), a.qkv.resize(3 * N * cl);
    a.att.resize(sz(batch) * s.hl * sz(seq_len) * sz(seq_len)), a.atty.resize(N * cl), a.res2.resize(N * C);
    a.ln2.resize(N * C), a.ln2_mean.resize(N), a.ln2_rstd.resize(N), a.fch.resize(4 * N * cl),
        a.fch_gelu.resize(4 * N * cl);
  }
  s.tmp.resize(N * C), s.dresid.resize(N * C), s.dln.resize(N * C), s.datty.resize(N * cl);
  s.dqkv.resize(3 * N * cl), s.dfch.resize(4 * N * cl), s.dscore.resize(sz(seq_len) * sz(seq_len));
}

TpPass::~TpPass() = default;

void TpPass::set_tokens(const int32_t* inputs, const int32_t* targets) {
  Impl& s = *impl_;
  if (inputs) std::copy(inputs, inputs + s.N, s.inputs.begin());
  if (targets) std::copy(targets, targets + s.N, s.targets.begin());
}
size_t TpPass::rows() const { return impl_->N; }
float* TpPass::input() { return impl_->xs.front().data(); }
const float* TpPass::output() const { return impl_->xs.back().data(); }
float* TpPass::grad() { return impl_->dresid.data(); }

void TpPass::embed_forward(const float* wte, const float* wpe) {
  Impl& s = *impl_;
  float* x = input();
  const size_t v0 = sz(s.slice.rank) * s.vl, C = s.C;
  for (size_t n = 0; n < s.N; ++n) {
    const size_t tok = static_cast<size_t>(s.inputs[n]);
    if (tok >= v0 && tok < v0 + s.vl)
      std::memcpy(x + n * C, wte + (tok - v0) * C, C * sizeof(float));
    else
      std::fill(x + n * C, x + (n + 1) * C, 0.0f);
  }
  s.reduce(x, s.N * C, ReduceOp::kSum);  // exact: one rank holds each row, the others add 0
  for (size_t n = 0; n < s.N; ++n) {
    const float* pos = wpe + (n % sz(s.T)) * C;
    for (size_t j = 0; j < C; ++j) x[n * C + j] += pos[j];
  }
}

void TpPass::embed_backward(float* dwte, float* dwpe) {
  Impl& s = *impl_;
  const float* dx = s.dresid.data();
  const size_t v0 = sz(s.slice.rank) * s.vl, C = s.C, T = sz(s.T);
  std::fill(dwpe, dwpe + sz(s.c.max_seq) * C, 0.0f);
  for (size_t n = 0; n < s.N; ++n) {
    const size_t tok = static_cast<size_t>(s.inputs[n]);
    float* pos = dwpe + (n % T) * C;
    for (size_t j = 0; j < C; ++j) pos[j] += dx[n * C + j];
    if (tok >= v0 && tok < v0 + s.vl) {
      float* row = dwte + (tok - v0) * C;
      for (size_t j = 0; j < C; ++j) row[j] += dx[n * C + j];
    }
  }
}

void TpPass::block_forward(int i, const float* split, const float* rep) {
  Impl& s = *impl_;
  const int n = static_cast<int>(s.N), c = static_cast<int>(s.C), cl = static_cast<int>(s.cl);
  const auto p = split_view(split, s.C, s.cl);
  const auto r = rep_view(rep, s.C);
  auto& a = s.acts[sz(i)];
  const float* x = s.xs[sz(i)].data();
  float* out = s.xs[sz(i) + 1].data();
  const size_t nc = s.N * s.C;
  k::layernorm_forward(x, r.ln1_w, r.ln1_b, a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), n, c);
  k::linear_forward(a.ln1.data(), p.qkv_w, p.qkv_b, nullptr, a.qkv.data(), n, c, 3 * cl);
  k::attention_forward(a.qkv.data(), a.att.data(), a.atty.data(), s.B, s.T, cl, static_cast<int>(s.hl));
  k::linear_forward(a.atty.data(), p.proj_w, nullptr, nullptr, s.tmp.data(), n, cl, c);
  s.reduce(s.tmp.data(), nc, ReduceOp::kSum);
  for (size_t e = 0; e < nc; ++e) a.res2[e] = x[e] + (s.tmp[e] + r.proj_b[e % s.C]);
  k::layernorm_forward(a.res2.data(), r.ln2_w, r.ln2_b, a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), n, c);
  k::linear_forward(a.ln2.data(), p.fc_w, p.fc_b, nullptr, a.fch.data(), n, c, 4 * cl);
  k::gelu_forward(a.fch.data(), a.fch_gelu.data(), a.fch.size());
  k::linear_forward(a.fch_gelu.data(), p.fcproj_w, nullptr, nullptr, s.tmp.data(), n, 4 * cl, c);
  s.reduce(s.tmp.data(), nc, ReduceOp::kSum);
  for (size_t e = 0; e < nc; ++e) out[e] = a.res2[e] + (s.tmp[e] + r.fcproj_b[e % s.C]);
}

void TpPass::block_backward(int i, const float* split, const float* rep, float* dsplit, float* drep) {
  Impl& s = *impl_;
  const int n = static_cast<int>(s.N), c = static_cast<int>(s.C), cl = static_cast<int>(s.cl);
  const auto p = split_view(split, s.C, s.cl);
  const auto r = rep_view(rep, s.C);
  const auto g = split_view(dsplit, s.C, s.cl);
  const auto gr = rep_view(drep, s.C);
  auto& a = s.acts[sz(i)];
  const float* x = s.xs[sz(i)].data();
  float* dresid = s.dresid.data();
  // MLP (g's backward is the identity: dresid is already the full gradient on every rank).
  k::linear_backward(dresid, a.fch_gelu.data(), p.fcproj_w, s.dfch.data(), g.fcproj_w, gr.fcproj_b, n, 4 * cl, c);
  k::gelu_backward(a.fch.data(), s.dfch.data(), s.dfch.data(), s.dfch.size());
  k::linear_backward(s.dfch.data(), a.ln2.data(), p.fc_w, s.dln.data(), g.fc_w, g.fc_b, n, c, 4 * cl);
  s.reduce(s.dln.data(), s.N * s.C, ReduceOp::kSum);  // f's backward
  k::layernorm_backward(s.dln.data(), a.res2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), r.ln2_w, dresid, gr.ln2_w,
                        gr.ln2_b, n, c, /*accumulate_dx=*/true);
  // Attention.
  k::linear_backward(dresid, a.atty.data(), p.proj_w, s.datty.data(), g.proj_w, gr.proj_b, n, cl, c);
  k::attention_backward(s.datty.data(), a.qkv.data(), a.att.data(), s.dqkv.data(), s.dscore.data(), s.B, s.T, cl,
                        static_cast<int>(s.hl));
  k::linear_backward(s.dqkv.data(), a.ln1.data(), p.qkv_w, s.dln.data(), g.qkv_w, g.qkv_b, n, c, 3 * cl);
  s.reduce(s.dln.data(), s.N * s.C, ReduceOp::kSum);
  k::layernorm_backward(s.dln.data(), x, a.ln1_mean.data(), a.ln1_rstd.data(), r.ln1_w, dresid, gr.ln1_w, gr.ln1_b, n,
                        c, /*accumulate_dx=*/true);
}

float TpPass::head_forward(const float* wte, const float* lnf) {
  Impl& s = *impl_;
  const int n = static_cast<int>(s.N), c = static_cast<int>(s.C), vl = static_cast<int>(s.vl);
  const size_t N = s.N, V = s.vl, v0 = sz(s.slice.rank) * s.vl;
  s.lnf.resize(N * s.C), s.lnf_mean.resize(N), s.lnf_rstd.resize(N), s.logits.resize(N * V), s.lse.resize(N);
  k::layernorm_forward(s.xs.back().data(), lnf, lnf + s.C, s.lnf.data(), s.lnf_mean.data(), s.lnf_rstd.data(), n, c);
  k::linear_forward(s.lnf.data(), wte, nullptr, nullptr, s.logits.data(), n, c, vl);
  // Vocab-parallel cross-entropy: the global row max, then the sum of exponentials and the
  // target's logit (held by one rank; the others add 0) in one all-reduce.
  s.stats.assign(3 * N, 0.0f);
  float* mx = s.stats.data();
  float* sums = mx + N;  // [sum exp (N) | target logit (N)]
  for (size_t r = 0; r < N; ++r) mx[r] = *std::max_element(s.logits.begin() + static_cast<long>(r * V),
                                                           s.logits.begin() + static_cast<long>((r + 1) * V));
  s.reduce(mx, N, ReduceOp::kMax);
  for (size_t r = 0; r < N; ++r) {
    const float* row = s.logits.data() + r * V;
    double z = 0;
    for (size_t j = 0; j < V; ++j) z += std::exp(static_cast<double>(row[j] - mx[r]));
    sums[r] = static_cast<float>(z);
    const size_t tgt = static_cast<size_t>(s.targets[r]);
    sums[N + r] = tgt >= v0 && tgt < v0 + V ? row[tgt - v0] : 0.0f;
  }
  s.reduce(sums, 2 * N, ReduceOp::kSum);
  double loss = 0;
  for (size_t r = 0; r < N; ++r) {
    s.lse[r] = mx[r] + std::log(sums[r]);
    loss += static_cast<double>(s.lse[r]) - sums[N + r];
  }
  return static_cast<float>(loss / static_cast<double>(N));
}

const float* TpPass::logits() const { return impl_->logits.data(); }

void TpPass::head_backward(const float* wte, const float* lnf, float* dwte, float* dlnf) {
  Impl& s = *impl_;
  const int n = static_cast<int>(s.N), c = static_cast<int>(s.C), vl = static_cast<int>(s.vl);
  const size_t N = s.N, V = s.vl, v0 = sz(s.slice.rank) * s.vl;
  const float inv_n = 1.0f / static_cast<float>(N);
  for (size_t r = 0; r < N; ++r) {
    float* row = s.logits.data() + r * V;
    const size_t tgt = static_cast<size_t>(s.targets[r]);
    for (size_t j = 0; j < V; ++j) {
      const float p = std::exp(row[j] - s.lse[r]);
      row[j] = (p - (v0 + j == tgt ? 1.0f : 0.0f)) * inv_n;
    }
  }
  k::linear_backward(s.logits.data(), s.lnf.data(), wte, s.dln.data(), dwte, nullptr, n, c, vl);
  s.reduce(s.dln.data(), N * s.C, ReduceOp::kSum);
  k::layernorm_backward(s.dln.data(), s.xs.back().data(), s.lnf_mean.data(), s.lnf_rstd.data(), lnf, s.dresid.data(),
                        dlnf, dlnf + s.C, n, c, /*accumulate_dx=*/false);
}

}  // namespace mics::model
