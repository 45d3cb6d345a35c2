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
  const auto s = tp_split_view(split, C, cl);
  for (size_t part = 0; part < 3; ++part) {
    copy_rows(f.qkv_w, C, part * C + k * cl, cl, s.qkv_w + part * cl * C);
    std::memcpy(s.qkv_b + part * cl, f.qkv_b + part * C + k * cl, cl * sizeof(float));
  }
  copy_cols(f.proj_w, C, C, k * cl, cl, s.proj_w);
  copy_rows(f.fc_w, C, k * 4 * cl, 4 * cl, s.fc_w);
  std::memcpy(s.fc_b, f.fc_b + k * 4 * cl, 4 * cl * sizeof(float));
  copy_cols(f.fcproj_w, C, 4 * C, k * 4 * cl, 4 * cl, s.fcproj_w);
  const auto r = tp_rep_view(rep, C);
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
  bool sp, recompute;
  size_t Nl, Tl;  // local rows and positions per sequence: N and T, or N/t and T/t with sp
  TensorOps ops;
  std::vector<int32_t> inputs, targets;
  std::vector<std::vector<float>> xs;  // xs[i]: input of local block i; xs[blocks]: the output ([Nl, C])
  // ln1, res2, ln2 and their statistics: Nl rows (the LayerNorm region); the rest N rows.
  struct BlockActs {
    std::vector<float> ln1, ln1_mean, ln1_rstd, qkv, att, atty, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu;
  };
  std::vector<BlockActs> acts;  // one per block, or one shared with recompute
  // head (lnf and its statistics: Nl rows)
  std::vector<float> lnf, lnf_mean, lnf_rstd, logits, lse;
  // scratch: tmp, full, gbuf [N, C]; part, dln_local [Nl, C] (sp)
  std::vector<float> tmp, full, gbuf, part, dln_local, dresid, dln, datty, dqkv, dfch, dscore, stats;

  void reduce(float* data, size_t count, ReduceOp op) {
    if (slice.size > 1) ops.all_reduce(data, count, op);
  }
  BlockActs& block_acts(int i) { return acts[recompute ? 0 : sz(i)]; }

  // Sequence-parallel row orders. A gathered [N, cols] array is rank-major: row j holds rank
  // j / Nl's local row j % Nl, i.e. sequence b, position k*Tl + tl; "natural" is (b, position).
  void to_natural(const float* rank_major, float* natural, size_t cols) const {
    const size_t t = sz(slice.size), run = Tl * cols * sizeof(float);
    for (size_t k = 0; k < t; ++k)
      for (size_t b = 0; b < sz(B); ++b)
        std::memcpy(natural + (b * sz(T) + k * Tl) * cols, rank_major + (k * Nl + b * Tl) * cols, run);
  }
  void to_rank_major(const float* natural, float* rank_major, size_t cols) const {
    const size_t t = sz(slice.size), run = Tl * cols * sizeof(float);
    for (size_t k = 0; k < t; ++k)
      for (size_t b = 0; b < sz(B); ++b)
        std::memcpy(rank_major + (k * Nl + b * Tl) * cols, natural + (b * sz(T) + k * Tl) * cols, run);
  }
  size_t natural_row(size_t j) const {
    const size_t k = j / Nl, rem = j % Nl;
    return rem / Tl * sz(T) + k * Tl + rem % Tl;
  }
  // f's forward / g's backward: every rank's local rows [Nl, C] -> all N rows in `full`,
  // rank-major or natural.
  void gather_rows(const float* local, float* full_out, bool natural) {
    if (!natural) return ops.all_gather(local, full_out, N * C);
    ops.all_gather(local, gbuf.data(), N * C);
    to_natural(gbuf.data(), full_out, C);
  }
  // g's forward / f's backward: the sum over the ranks of `full_in` [N, C] (rank-major or
  // natural), this rank's rows of it into local.
  void scatter_rows(const float* full_in, float* local, bool natural) {
    if (!natural) return ops.reduce_scatter(full_in, local, N * C);
    to_rank_major(full_in, gbuf.data(), C);
    ops.reduce_scatter(gbuf.data(), local, N * C);
  }
  // The bias gradient of a row-parallel GEMM from this rank's rows only (summed over t with
  // the rest of the rep unit): db[j] = sum over rows of dout[row, j].
  void local_bias_grad(const float* dout, float* db) const {
    std::fill(db, db + C, 0.0f);
    for (size_t r = 0; r < Nl; ++r)
      for (size_t j = 0; j < C; ++j) db[j] += dout[r * C + j];
  }
};

TpPass::TpPass(const GptConfig& c, TpSlice slice, int batch, int seq_len, int blocks, TensorOps ops, TpOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  MICS_CHECK(slice.size >= 1 && c.heads % slice.size == 0 && c.vocab % slice.size == 0,
             "tensor parallel size must divide the heads and the vocabulary");
  MICS_CHECK(!options.sequence_parallel || (slice.size > 1 && seq_len % slice.size == 0 && ops.all_gather && ops.reduce_scatter),
             "sequence parallelism needs t > 1 dividing the sequence length, and the all-gather and reduce-scatter");
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
  s.sp = options.sequence_parallel;
  s.recompute = options.recompute;
  s.Nl = s.sp ? s.N / sz(slice.size) : s.N;
  s.Tl = s.sp ? sz(seq_len) / sz(slice.size) : sz(seq_len);
  s.ops = std::move(ops);
  s.inputs.assign(s.N, 0);
  s.targets.assign(s.N, 0);
  const size_t N = s.N, C = s.C, cl = s.cl, Nl = s.Nl;
  s.xs.assign(sz(blocks) + 1, std::vector<float>(Nl * C));
  s.acts.resize(s.recompute ? std::min<size_t>(1, sz(blocks)) : sz(blocks));
  for (auto& a : s.acts) {
    a.ln1.resize(Nl * C), a.ln1_mean.resize(Nl), a.ln1_rstd.resize(Nl), a.qkv.resize(3 * N * cl);
    a.att.resize(sz(batch) * s.hl * sz(seq_len) * sz(seq_len)), a.atty.resize(N * cl), a.res2.resize(Nl * C);
    a.ln2.resize(Nl * C), a.ln2_mean.resize(Nl), a.ln2_rstd.resize(Nl), a.fch.resize(4 * N * cl),
        a.fch_gelu.resize(4 * N * cl);
  }
  s.tmp.resize(N * C), s.dresid.resize(Nl * C), s.dln.resize(N * C), s.datty.resize(N * cl);
  s.dqkv.resize(3 * N * cl), s.dfch.resize(4 * N * cl), s.dscore.resize(sz(seq_len) * sz(seq_len));
  if (s.sp) s.full.resize(N * C), s.gbuf.resize(N * C), s.part.resize(Nl * C), s.dln_local.resize(Nl * C);
}

TpPass::~TpPass() = default;

void TpPass::set_tokens(const int32_t* inputs, const int32_t* targets) {
  Impl& s = *impl_;
  if (inputs) std::copy(inputs, inputs + s.N, s.inputs.begin());
  if (targets) std::copy(targets, targets + s.N, s.targets.begin());
}
size_t TpPass::rows() const { return impl_->N; }
size_t TpPass::local_rows() const { return impl_->Nl; }
float* TpPass::input() { return impl_->xs.front().data(); }
const float* TpPass::output() const { return impl_->xs.back().data(); }
float* TpPass::grad() { return impl_->dresid.data(); }

uint64_t TpPass::layernorm_region_bytes() const {
  const Impl& s = *impl_;
  size_t floats = 0;
  for (const auto& x : s.xs) floats += x.size();
  for (const auto& a : s.acts)
    floats += a.ln1.size() + a.ln1_mean.size() + a.ln1_rstd.size() + a.res2.size() + a.ln2.size() + a.ln2_mean.size() +
              a.ln2_rstd.size();
  floats += s.lnf.size() + s.lnf_mean.size() + s.lnf_rstd.size();
  return floats * sizeof(float);
}

uint64_t tp_activation_bytes(const GptConfig& c, int t, int batch, int seq_len, int blocks, bool sequence_parallel,
                             bool recompute, bool with_head) {
  // The sizes TpPass's constructor and head_forward give its buffers (kept in step with them:
  // tests/plan_test.cpp compares this with a mesh run's own count).
  const size_t N = sz(batch) * sz(seq_len), C = sz(c.channels), ts = sz(t);
  const size_t Nl = sequence_parallel ? N / ts : N, cl = C / ts, hl = sz(c.heads) / ts, vl = sz(c.vocab) / ts;
  const size_t kept_blocks = recompute ? std::min<size_t>(1, sz(blocks)) : sz(blocks);
  const size_t layernorm_region = 3 * Nl * C + 4 * Nl;  // ln1, res2, ln2 and the two LayerNorms' mean, rstd
  const size_t split = 3 * N * cl + sz(batch) * hl * sz(seq_len) * sz(seq_len) + N * cl + 8 * N * cl;  // qkv att atty fch gelu
  size_t floats = (sz(blocks) + 1) * Nl * C + kept_blocks * (layernorm_region + split);
  if (with_head) floats += Nl * C + 2 * Nl + N * vl + N;  // lnf and its statistics, logits, lse
  return floats * sizeof(float);
}

uint64_t TpPass::activation_bytes() const {
  const Impl& s = *impl_;
  size_t floats = 0;
  for (const auto& a : s.acts) floats += a.qkv.size() + a.att.size() + a.atty.size() + a.fch.size() + a.fch_gelu.size();
  floats += s.logits.size() + s.lse.size();
  return floats * sizeof(float) + layernorm_region_bytes();
}

void TpPass::embed_forward(const float* wte, const float* wpe) {
  Impl& s = *impl_;
  float* x = input();
  const size_t v0 = sz(s.slice.rank) * s.vl, C = s.C;
  // Every rank looks up all N tokens (zeros outside its vocabulary slice); with sequence
  // parallelism in rank-major row order, so the reduce-scatter leaves each rank its positions.
  float* partial = s.sp ? s.tmp.data() : x;
  for (size_t j = 0; j < s.N; ++j) {
    const size_t tok = static_cast<size_t>(s.inputs[s.sp ? s.natural_row(j) : j]);
    if (tok >= v0 && tok < v0 + s.vl)
      std::memcpy(partial + j * C, wte + (tok - v0) * C, C * sizeof(float));
    else
      std::fill(partial + j * C, partial + (j + 1) * C, 0.0f);
  }
  // Exact either way: one rank holds each row, the others add 0.
  if (s.sp) s.ops.reduce_scatter(partial, x, s.N * C);
  else s.reduce(x, s.N * C, ReduceOp::kSum);
  const size_t p0 = s.sp ? sz(s.slice.rank) * s.Tl : 0;  // this rank's first position
  for (size_t n = 0; n < s.Nl; ++n) {
    const float* pos = wpe + (p0 + n % s.Tl) * C;
    for (size_t j = 0; j < C; ++j) x[n * C + j] += pos[j];
  }
}

void TpPass::embed_backward(float* dwte, float* dwpe) {
  Impl& s = *impl_;
  // With sequence parallelism the gradient of every row is gathered (the wte slice needs the
  // rows of its tokens wherever they sit), so dwpe comes out whole on every rank.
  const float* dx = s.dresid.data();
  if (s.sp) {
    s.gather_rows(s.dresid.data(), s.full.data(), /*natural=*/true);
    dx = s.full.data();
  }
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
  const int n = static_cast<int>(s.N), nl = static_cast<int>(s.Nl), c = static_cast<int>(s.C),
            cl = static_cast<int>(s.cl);
  const auto p = tp_split_view(split, s.C, s.cl);
  const auto r = tp_rep_view(rep, s.C);
  auto& a = s.block_acts(i);
  const float* x = s.xs[sz(i)].data();
  float* out = s.xs[sz(i) + 1].data();
  const size_t ncl = s.Nl * s.C;
  // Attention: ln1 over the local rows; f (sp: all-gather, in (b, position) order for the
  // attention); the row-split proj's partial sums through g (all-reduce, or reduce-scatter).
  k::layernorm_forward(x, r.ln1_w, r.ln1_b, a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), nl, c);
  const float* ln1 = a.ln1.data();
  if (s.sp) s.gather_rows(a.ln1.data(), s.full.data(), /*natural=*/true), ln1 = s.full.data();
  k::linear_forward(ln1, p.qkv_w, p.qkv_b, nullptr, a.qkv.data(), n, c, 3 * cl);
  k::attention_forward(a.qkv.data(), a.att.data(), a.atty.data(), s.B, s.T, cl, static_cast<int>(s.hl));
  k::linear_forward(a.atty.data(), p.proj_w, nullptr, nullptr, s.tmp.data(), n, cl, c);
  const float* y = s.tmp.data();
  if (s.sp) s.scatter_rows(s.tmp.data(), s.part.data(), /*natural=*/true), y = s.part.data();
  else s.reduce(s.tmp.data(), ncl, ReduceOp::kSum);
  for (size_t e = 0; e < ncl; ++e) a.res2[e] = x[e] + (y[e] + r.proj_b[e % s.C]);
  // MLP: row-wise, so with sp it runs on the gathered rows in rank-major order as they come.
  k::layernorm_forward(a.res2.data(), r.ln2_w, r.ln2_b, a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), nl, c);
  const float* ln2 = a.ln2.data();
  if (s.sp) s.gather_rows(a.ln2.data(), s.full.data(), /*natural=*/false), ln2 = s.full.data();
  k::linear_forward(ln2, p.fc_w, p.fc_b, nullptr, a.fch.data(), n, c, 4 * cl);
  k::gelu_forward(a.fch.data(), a.fch_gelu.data(), a.fch.size());
  k::linear_forward(a.fch_gelu.data(), p.fcproj_w, nullptr, nullptr, s.tmp.data(), n, 4 * cl, c);
  if (s.sp) s.scatter_rows(s.tmp.data(), s.part.data(), /*natural=*/false), y = s.part.data();
  else s.reduce(s.tmp.data(), ncl, ReduceOp::kSum);
  for (size_t e = 0; e < ncl; ++e) out[e] = a.res2[e] + (y[e] + r.fcproj_b[e % s.C]);
}

void TpPass::block_backward(int i, const float* split, const float* rep, float* dsplit, float* drep) {
  Impl& s = *impl_;
  // Recompute: rerun the forward (the same bits into the shared activations; xs[i + 1] gets
  // the values it already holds), then the backward as usual.
  if (s.recompute) block_forward(i, split, rep);
  const int n = static_cast<int>(s.N), nl = static_cast<int>(s.Nl), c = static_cast<int>(s.C),
            cl = static_cast<int>(s.cl);
  const auto p = tp_split_view(split, s.C, s.cl);
  const auto r = tp_rep_view(rep, s.C);
  const auto g = tp_split_view(dsplit, s.C, s.cl);
  const auto gr = tp_rep_view(drep, s.C);
  auto& a = s.block_acts(i);
  const float* x = s.xs[sz(i)].data();
  float* dresid = s.dresid.data();
  // The gradient at a column-split GEMM's input: all-reduced (f's backward), or with sp
  // reduce-scattered to the local rows.
  float* dln_local = s.sp ? s.dln_local.data() : s.dln.data();
  // MLP. Without sp g's backward is the identity (dresid is already the full gradient on every
  // rank); with sp it is an all-gather, and the input of fc is gathered again.
  const float* dout = dresid;
  const float* ln2 = a.ln2.data();
  if (s.sp) {
    s.local_bias_grad(dresid, gr.fcproj_b);
    s.gather_rows(dresid, s.full.data(), /*natural=*/false), dout = s.full.data();
    s.gather_rows(a.ln2.data(), s.tmp.data(), /*natural=*/false), ln2 = s.tmp.data();
  }
  k::linear_backward(dout, a.fch_gelu.data(), p.fcproj_w, s.dfch.data(), g.fcproj_w, s.sp ? nullptr : gr.fcproj_b, n,
                     4 * cl, c);
  k::gelu_backward(a.fch.data(), s.dfch.data(), s.dfch.data(), s.dfch.size());
  k::linear_backward(s.dfch.data(), ln2, p.fc_w, s.dln.data(), g.fc_w, g.fc_b, n, c, 4 * cl);
  if (s.sp) s.scatter_rows(s.dln.data(), dln_local, /*natural=*/false);
  else s.reduce(s.dln.data(), s.N * s.C, ReduceOp::kSum);  // f's backward
  k::layernorm_backward(dln_local, a.res2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), r.ln2_w, dresid, gr.ln2_w,
                        gr.ln2_b, nl, c, /*accumulate_dx=*/true);
  // Attention (with sp in (b, position) row order).
  const float* ln1 = a.ln1.data();
  dout = dresid;
  if (s.sp) {
    s.local_bias_grad(dresid, gr.proj_b);
    s.gather_rows(dresid, s.full.data(), /*natural=*/true), dout = s.full.data();
    s.gather_rows(a.ln1.data(), s.tmp.data(), /*natural=*/true), ln1 = s.tmp.data();
  }
  k::linear_backward(dout, a.atty.data(), p.proj_w, s.datty.data(), g.proj_w, s.sp ? nullptr : gr.proj_b, n, cl, c);
  k::attention_backward(s.datty.data(), a.qkv.data(), a.att.data(), s.dqkv.data(), s.dscore.data(), s.B, s.T, cl,
                        static_cast<int>(s.hl));
  k::linear_backward(s.dqkv.data(), ln1, p.qkv_w, s.dln.data(), g.qkv_w, g.qkv_b, n, c, 3 * cl);
  if (s.sp) s.scatter_rows(s.dln.data(), dln_local, /*natural=*/true);
  else s.reduce(s.dln.data(), s.N * s.C, ReduceOp::kSum);
  k::layernorm_backward(dln_local, x, a.ln1_mean.data(), a.ln1_rstd.data(), r.ln1_w, dresid, gr.ln1_w, gr.ln1_b, nl,
                        c, /*accumulate_dx=*/true);
  // With sp the LayerNorms and the biases saw this rank's rows only: sum the rep unit over t.
  if (s.sp) s.reduce(drep, tp_rep_numel(s.c), ReduceOp::kSum);
}

float TpPass::head_forward(const float* wte, const float* lnf) {
  Impl& s = *impl_;
  const int n = static_cast<int>(s.N), nl = static_cast<int>(s.Nl), c = static_cast<int>(s.C),
            vl = static_cast<int>(s.vl);
  const size_t N = s.N, V = s.vl, v0 = sz(s.slice.rank) * s.vl;
  s.lnf.resize(s.Nl * s.C), s.lnf_mean.resize(s.Nl), s.lnf_rstd.resize(s.Nl), s.logits.resize(N * V), s.lse.resize(N);
  k::layernorm_forward(s.xs.back().data(), lnf, lnf + s.C, s.lnf.data(), s.lnf_mean.data(), s.lnf_rstd.data(), nl, c);
  const float* lnf_out = s.lnf.data();
  if (s.sp) s.gather_rows(s.lnf.data(), s.full.data(), /*natural=*/true), lnf_out = s.full.data();
  k::linear_forward(lnf_out, wte, nullptr, nullptr, s.logits.data(), n, c, vl);
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
  const int n = static_cast<int>(s.N), nl = static_cast<int>(s.Nl), c = static_cast<int>(s.C),
            vl = static_cast<int>(s.vl);
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
  // With sp: lnf's output gathered again for dwte, its gradient reduce-scattered to the local
  // rows, lnf's weight gradient summed over t.
  const float* lnf_out = s.lnf.data();
  if (s.sp) s.gather_rows(s.lnf.data(), s.tmp.data(), /*natural=*/true), lnf_out = s.tmp.data();
  k::linear_backward(s.logits.data(), lnf_out, wte, s.dln.data(), dwte, nullptr, n, c, vl);
  float* dln_local = s.sp ? s.dln_local.data() : s.dln.data();
  if (s.sp) s.scatter_rows(s.dln.data(), dln_local, /*natural=*/true);
  else s.reduce(s.dln.data(), N * s.C, ReduceOp::kSum);
  k::layernorm_backward(dln_local, s.xs.back().data(), s.lnf_mean.data(), s.lnf_rstd.data(), lnf, s.dresid.data(),
                        dlnf, dlnf + s.C, nl, c, /*accumulate_dx=*/false);
  if (s.sp) s.reduce(dlnf, tp_lnf_numel(s.c), ReduceOp::kSum);
}

}  // namespace mics::model
