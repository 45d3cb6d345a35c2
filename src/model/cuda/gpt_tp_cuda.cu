// A tensor-parallel GPT stage on a CUDA device (gpt_tp_cuda.hpp). The order of operations and
// of the tensor group's collectives is TpPass's (gpt_tp.cpp), with and without sequence
// parallelism and recompute; the kernels are gpt_cuda.cu's.
#include "model/cuda/gpt_tp_cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/dtype.hpp"
#include "model/cuda/check.cuh"
#include "model/cuda/gemm.hpp"
#include "model/cuda/kernels.hpp"

namespace mics::model::cuda {

namespace {

size_t sz(int v) { return static_cast<size_t>(v); }

// Device allocations owned by one stage, freed together.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() {
    for (void* p : blocks_) cudaFree(p);
  }
  template <typename T>
  T* take(size_t count) {
    void* p = nullptr;
    MICS_CUDA(cudaMalloc(&p, std::max<size_t>(count * sizeof(T), 256)));
    blocks_.push_back(p);
    bytes_ += count * sizeof(T);
    return static_cast<T*>(p);
  }
  uint64_t bytes() const { return bytes_; }

 private:
  std::vector<void*> blocks_;
  uint64_t bytes_ = 0;
};

using Rep = TpRepView<float>;

struct BlockActs {
  bf16_t* ln1;
  float *ln1_mean, *ln1_rstd;
  bf16_t* qkv;  // [N, 3*cl]: the local heads' q | k | v, read in place by the attention
  float* lse;   // [B, hl, T]
  bf16_t* atty; // [N, cl]
  float* res2;
  bf16_t* ln2;
  float *ln2_mean, *ln2_rstd;
  bf16_t *fch, *fch_gelu;  // [N, 4*cl]
};

class CudaStagePass final : public StagePass {
 public:
  CudaStagePass(const GptConfig& c, TpSlice slice, int batch, int seq_len, int blocks, TensorOps ops, TpOptions options)
      : c_(c),
        slice_(slice),
        B_(batch),
        T_(seq_len),
        blocks_(blocks),
        ops_(std::move(ops)),
        sp_(options.sequence_parallel),
        recompute_(options.recompute) {
    N_ = sz(batch) * sz(seq_len);
    Nl_ = sp_ ? N_ / sz(slice.size) : N_;
    Tl_ = sp_ ? sz(seq_len) / sz(slice.size) : sz(seq_len);
    C_ = sz(c.channels);
    cl_ = C_ / sz(slice.size);
    hl_ = sz(c.heads) / sz(slice.size);
    vl_ = sz(c.vocab) / sz(slice.size);
    ldv_ = (vl_ + 7) / 8 * 8;
    D_ = c.channels / c.heads;
    MICS_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const size_t N = N_, C = C_, cl = cl_, Nl = Nl_;
    inputs_.assign(N, 0), targets_.assign(N, 0);
    h_input_.assign(Nl * C, 0.0f), h_output_.assign(Nl * C, 0.0f), h_grad_.assign(Nl * C, 0.0f);
    h_stage_.resize(std::max(N * C, 2 * N)), h_bf16_.resize(N * C);
    if (sp_) h_full_.resize(N * C), h_gbuf_.resize(N * C);
    d_tokens_ = mem_.take<int32_t>(N), d_targets_ = mem_.take<int32_t>(N);
    const size_t split_n = tp_split_numel(c, slice.size), rep_n = tp_rep_numel(c);
    w_split_ = mem_.take<float>(split_n), w_split16_ = mem_.take<bf16_t>(split_n), w_rep_ = mem_.take<float>(rep_n);
    g_split_ = mem_.take<float>(split_n), g_rep_ = mem_.take<float>(rep_n);
    const uint64_t before_acts = mem_.bytes();
    // The residual stream and the LayerNorm regions hold this rank's Nl rows (all N without
    // sequence parallelism); with recompute one set of block activations serves every block.
    for (int i = 0; i <= blocks; ++i) xs_.push_back(mem_.take<float>(Nl * C));
    const uint64_t xs_bytes = mem_.bytes() - before_acts;
    uint64_t ln_region = xs_bytes;
    const int kept = recompute_ ? std::min(1, blocks) : blocks;
    for (int i = 0; i < kept; ++i) {
      BlockActs a{};
      const uint64_t b0 = mem_.bytes();
      a.ln1 = mem_.take<bf16_t>(Nl * C), a.ln1_mean = mem_.take<float>(Nl), a.ln1_rstd = mem_.take<float>(Nl);
      a.res2 = mem_.take<float>(Nl * C);
      a.ln2 = mem_.take<bf16_t>(Nl * C), a.ln2_mean = mem_.take<float>(Nl), a.ln2_rstd = mem_.take<float>(Nl);
      ln_region += mem_.bytes() - b0;
      a.qkv = mem_.take<bf16_t>(3 * N * cl), a.lse = mem_.take<float>(sz(batch) * hl_ * sz(seq_len));
      a.atty = mem_.take<bf16_t>(N * cl), a.fch = mem_.take<bf16_t>(4 * N * cl), a.fch_gelu = mem_.take<bf16_t>(4 * N * cl);
      acts_.push_back(a);
    }
    act_bytes_ = mem_.bytes() - before_acts;
    ln_region_bytes_ = ln_region;
    // scratch
    tmp_ = mem_.take<float>(N * C), dres_ = mem_.take<float>(N * C), dres16_ = mem_.take<bf16_t>(N * C);
    dln_ = mem_.take<bf16_t>(N * C), datty_ = mem_.take<bf16_t>(N * cl), dqkv_ = mem_.take<bf16_t>(3 * N * cl);
    dfch_ = mem_.take<bf16_t>(4 * N * cl);
    partial_ = mem_.take<float>(std::max(layernorm_partial_floats(static_cast<int>(N), c.channels),
                                         colsum_partial_floats(static_cast<int>(N), static_cast<int>(std::max(4 * cl, C)))));
    flash_scratch_ = mem_.take<float>(flash_scratch_floats(static_cast<int>(sz(batch) * hl_), seq_len, D_));
    if (sp_) {  // the gathered rows of a LayerNorm output or of a gradient (two at once in the backward)
      full16_ = mem_.take<bf16_t>(N * C), full16b_ = mem_.take<bf16_t>(N * C);
      part_ = mem_.take<float>(Nl * C), dln_local_ = mem_.take<bf16_t>(Nl * C);
    }
  }
  ~CudaStagePass() override {
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  void set_tokens(const int32_t* inputs, const int32_t* targets) override {
    if (inputs) std::copy(inputs, inputs + N_, inputs_.begin());
    if (targets) std::copy(targets, targets + N_, targets_.begin());
    up(d_tokens_, inputs_.data(), N_);
    up(d_targets_, targets_.data(), N_);
  }
  size_t rows() const override { return N_; }
  size_t local_rows() const override { return Nl_; }
  float* input() override { return h_input_.data(); }
  const float* output() const override { return h_output_.data(); }
  float* grad() override { return h_grad_.data(); }
  uint64_t activation_bytes() const override { return act_bytes_ + head_act_bytes_; }
  uint64_t layernorm_region_bytes() const override { return ln_region_bytes_ + head_ln_bytes_; }

  // On the host: each rank looks up the tokens of its vocabulary slice (zeros for the rest),
  // the tensor group sums the rows (exact: one rank holds each), then the positions are added.
  // With sequence parallelism the rows are looked up in rank-major order and reduce-scattered,
  // so each rank gets its positions (TpPass's order).
  void embed_forward(const float* wte, const float* wpe) override {
    const size_t v0 = sz(slice_.rank) * vl_, C = C_;
    float* x = h_input_.data();
    float* partial = sp_ ? h_full_.data() : x;
    for (size_t j = 0; j < N_; ++j) {
      const size_t tok = static_cast<size_t>(inputs_[sp_ ? natural_row(j) : j]);
      if (tok >= v0 && tok < v0 + vl_)
        std::memcpy(partial + j * C, wte + (tok - v0) * C, C * sizeof(float));
      else
        std::fill(partial + j * C, partial + (j + 1) * C, 0.0f);
    }
    if (sp_)
      ops_.reduce_scatter(partial, x, N_ * C);
    else if (slice_.size > 1)
      ops_.all_reduce(x, N_ * C, ReduceOp::kSum);
    const size_t p0 = sp_ ? sz(slice_.rank) * Tl_ : 0;  // this rank's first position
    for (size_t n = 0; n < Nl_; ++n) {
      const float* pos = wpe + (p0 + n % Tl_) * C;
      for (size_t j = 0; j < C; ++j) x[n * C + j] += pos[j];
    }
  }

  void embed_backward(float* dwte, float* dwpe) override {
    const size_t v0 = sz(slice_.rank) * vl_, C = C_, T = sz(T_);
    const float* dx = h_grad_.data();
    if (sp_) {  // every row's gradient, in (b, position) order: the wte slice needs its tokens' rows
      ops_.all_gather(h_grad_.data(), h_gbuf_.data(), N_ * C);
      to_natural(h_gbuf_.data(), h_full_.data());
      dx = h_full_.data();
    }
    std::fill(dwpe, dwpe + sz(c_.max_seq) * C, 0.0f);
    for (size_t n = 0; n < N_; ++n) {
      const size_t tok = static_cast<size_t>(inputs_[n]);
      float* pos = dwpe + (n % T) * C;
      for (size_t j = 0; j < C; ++j) pos[j] += dx[n * C + j];
      if (tok >= v0 && tok < v0 + vl_) {
        float* row = dwte + (tok - v0) * C;
        for (size_t j = 0; j < C; ++j) row[j] += dx[n * C + j];
      }
    }
  }

  void block_forward(int i, const float* split, const float* rep) override {
    load_block(split, rep);
    if (i == 0) up(xs_[0], h_input_.data(), Nl_ * C_);
    forward_compute(i);
    if (i + 1 == blocks_) down(h_output_.data(), xs_[sz(i) + 1], Nl_ * C_);
    sync();
  }

  void block_backward(int i, const float* split, const float* rep, float* dsplit, float* drep) override {
    const int n = static_cast<int>(N_), nl = static_cast<int>(Nl_), c = static_cast<int>(C_),
              cl = static_cast<int>(cl_);
    load_block(split, rep);
    // Recompute: rerun the block's forward, collectives included (TpPass's order), into the
    // shared activations; xs_[i + 1] gets the values it already holds.
    if (recompute_) forward_compute(i);
    const auto p = tp_split_view(w_split16_, C_, cl_);
    const Rep r = tp_rep_view(w_rep_, C_);
    const auto g = tp_split_view(g_split_, C_, cl_);
    const Rep gr = tp_rep_view(g_rep_, C_);
    const BlockActs& a = acts(i);
    const float* x = xs_[sz(i)];
    if (i + 1 == blocks_ && !grad_on_device_) {  // dL/d(output) received from the next stage
      up(dres_, h_grad_.data(), Nl_ * C_);
      f32_to_bf16(dres_, dres16_, Nl_ * C_, s());
    }
    MICS_CUDA(cudaMemsetAsync(g_split_, 0, tp_split_numel(c_, slice_.size) * sizeof(float), stream_));
    MICS_CUDA(cudaMemsetAsync(g_rep_, 0, tp_rep_numel(c_) * sizeof(float), stream_));
    // MLP (rank-major rows with sp), then attention ((b, position) rows with sp).
    const bf16_t* dout = through_g_backward(gr.fcproj_b, /*natural=*/false);
    const bf16_t* ln2 = sp_ ? gathered(a.ln2, /*natural=*/false) : a.ln2;  // gathered again for fc_w's gradient
    blas_.linear_backward_input(dout, c, p.fcproj_w, a.fch, dfch_, n, 4 * cl, c, s());
    blas_.linear_backward_weight(dout, c, a.fch_gelu, g.fcproj_w, n, 4 * cl, c, s());
    blas_.linear_backward_input(dfch_, 4 * cl, p.fc_w, nullptr, dln_, n, c, 4 * cl, s());
    blas_.linear_backward_weight(dfch_, 4 * cl, ln2, g.fc_w, n, c, 4 * cl, s());
    column_sum(dfch_, g.fc_b, partial_, n, 4 * cl, s());
    layernorm_backward(through_f_backward(/*natural=*/false), a.res2, a.ln2_mean, a.ln2_rstd, r.ln2_w, dres_, dres16_,
                       gr.ln2_w, gr.ln2_b, partial_, nl, c, s());
    dout = through_g_backward(gr.proj_b, /*natural=*/true);
    const bf16_t* ln1 = sp_ ? gathered(a.ln1, /*natural=*/true) : a.ln1;
    blas_.linear_backward_input(dout, c, p.proj_w, nullptr, datty_, n, cl, c, s());
    blas_.linear_backward_weight(dout, c, a.atty, g.proj_w, n, cl, c, s());
    flash_attention_backward(a.qkv, a.qkv + cl, a.qkv + 2 * cl, a.atty, datty_, a.lse, dqkv_, dqkv_ + cl, dqkv_ + 2 * cl,
                             flash_scratch_, B_ * static_cast<int>(hl_), T_, D_, s(), 1, layout(),
                             /*min_blocks=*/3, /*key_tile=*/64);
    blas_.linear_backward_input(dqkv_, 3 * cl, p.qkv_w, nullptr, dln_, n, c, 3 * cl, s());
    blas_.linear_backward_weight(dqkv_, 3 * cl, ln1, g.qkv_w, n, c, 3 * cl, s());
    column_sum(dqkv_, g.qkv_b, partial_, n, 3 * cl, s());
    layernorm_backward(through_f_backward(/*natural=*/true), x, a.ln1_mean, a.ln1_rstd, r.ln1_w, dres_, dres16_,
                       gr.ln1_w, gr.ln1_b, partial_, nl, c, s());
    down(dsplit, g_split_, tp_split_numel(c_, slice_.size));
    down(drep, g_rep_, tp_rep_numel(c_));
    if (i == 0) {
      down(h_grad_.data(), dres_, Nl_ * C_);
      grad_on_device_ = false;
    }
    sync();
    // With sp the LayerNorms and the biases saw this rank's rows only: sum the rep unit over t.
    if (sp_) ops_.all_reduce(drep, tp_rep_numel(c_), ReduceOp::kSum);
  }

  float head_forward(const float* wte, const float* lnf) override {
    const int n = static_cast<int>(N_), c = static_cast<int>(C_), vl = static_cast<int>(vl_),
              ld = static_cast<int>(ldv_), v0 = slice_.rank * vl;
    load_head(wte, lnf);
    const float* x = xs_[sz(blocks_)];
    layernorm_forward(x, d_lnf_, d_lnf_ + C_, lnf16_, lnf_mean_, lnf_rstd_, static_cast<int>(Nl_), c, s());
    const bf16_t* lnf_out = lnf16_;
    if (sp_) gather_rows(lnf16_, full16_, /*natural=*/true), lnf_out = full16_;
    blas_.linear_ld(lnf_out, wte16_, logits_, ld, n, c, vl, s());
    // Vocab-parallel cross-entropy: the global row max, then the sums of exponentials and the
    // target's logit (one rank holds it, the others add 0) in one all-reduce.
    vocab_slice_max(logits_, d_stats_, n, vl, ld, s());
    reduce_f32(d_stats_, N_, ReduceOp::kMax);
    vocab_slice_sums(logits_, d_targets_, d_stats_, d_stats_ + N_, n, vl, ld, v0, s());
    std::vector<float> mx(N_), sums(2 * N_);
    down(mx.data(), d_stats_, N_);
    down(sums.data(), d_stats_ + N_, 2 * N_);
    sync();
    if (slice_.size > 1) ops_.all_reduce(sums.data(), 2 * N_, ReduceOp::kSum);
    std::vector<float> lse(N_);
    double loss = 0;
    for (size_t row = 0; row < N_; ++row) {
      lse[row] = mx[row] + std::log(sums[row]);
      loss += static_cast<double>(lse[row]) - sums[N_ + row];
    }
    up(d_lse_, lse.data(), N_);
    sync();
    logits_fresh_ = true;
    return static_cast<float>(loss / static_cast<double>(N_));
  }

  const float* logits() const override {
    MICS_CHECK(logits_fresh_, "logits() after head_backward: the logits were replaced by their gradient");
    std::vector<bf16_t> raw(N_ * ldv_);
    MICS_CUDA(cudaMemcpy(raw.data(), logits_, raw.size() * sizeof(bf16_t), cudaMemcpyDeviceToHost));
    h_logits_.resize(N_ * vl_);
    for (size_t row = 0; row < N_; ++row)
      for (size_t j = 0; j < vl_; ++j) h_logits_[row * vl_ + j] = ::mics::bf16_to_f32(raw[row * ldv_ + j]);
    return h_logits_.data();
  }

  void head_backward(const float* wte, const float* lnf, float* dwte, float* dlnf) override {
    const int n = static_cast<int>(N_), c = static_cast<int>(C_), vl = static_cast<int>(vl_),
              ld = static_cast<int>(ldv_), v0 = slice_.rank * vl;
    load_head(wte, lnf);
    vocab_slice_grad(logits_, d_targets_, d_lse_, n, vl, ld, v0, 1.0f / static_cast<float>(N_), s());
    logits_fresh_ = false;
    MICS_CUDA(cudaMemsetAsync(g_wte_, 0, vl_ * C_ * sizeof(float), stream_));
    MICS_CUDA(cudaMemsetAsync(g_lnf_, 0, 2 * C_ * sizeof(float), stream_));
    // With sp: lnf's output gathered again for dwte, its gradient reduce-scattered to the local
    // rows, lnf's weight gradient summed over t.
    const bf16_t* lnf_out = lnf16_;
    if (sp_) gather_rows(lnf16_, full16_, /*natural=*/true), lnf_out = full16_;
    blas_.linear_backward_input(logits_, ld, wte16_, nullptr, dln_, n, c, vl, s());
    blas_.linear_backward_weight(logits_, ld, lnf_out, g_wte_, n, c, vl, s());
    const bf16_t* dln_local = through_f_backward(/*natural=*/true);
    MICS_CUDA(cudaMemsetAsync(dres_, 0, Nl_ * C_ * sizeof(float), stream_));
    layernorm_backward(dln_local, xs_[sz(blocks_)], lnf_mean_, lnf_rstd_, d_lnf_, dres_, dres16_, g_lnf_, g_lnf_ + C_,
                       partial_, static_cast<int>(Nl_), c, s());
    down(dwte, g_wte_, vl_ * C_);
    down(dlnf, g_lnf_, 2 * C_);
    sync();
    if (sp_) ops_.all_reduce(dlnf, tp_lnf_numel(c_), ReduceOp::kSum);
    grad_on_device_ = true;
  }

 private:
  void* s() const { return stream_; }
  FlashLayout layout() const { return {static_cast<int>(hl_), static_cast<int>(3 * cl_), static_cast<int>(cl_)}; }
  void sync() const { MICS_CUDA(cudaStreamSynchronize(stream_)); }
  template <typename T>
  void up(T* device, const T* host, size_t count) {
    MICS_CUDA(cudaMemcpyAsync(device, host, count * sizeof(T), cudaMemcpyHostToDevice, stream_));
  }
  template <typename T>
  void down(T* host, const T* device, size_t count) {
    MICS_CUDA(cudaMemcpyAsync(host, device, count * sizeof(T), cudaMemcpyDeviceToHost, stream_));
  }

  BlockActs& acts(int i) { return acts_[recompute_ ? 0 : sz(i)]; }

  // Block i's forward from xs_[i] (on the device) into xs_[i + 1], keeping its activations.
  void forward_compute(int i) {
    const int n = static_cast<int>(N_), nl = static_cast<int>(Nl_), c = static_cast<int>(C_),
              cl = static_cast<int>(cl_);
    const auto p = tp_split_view(w_split16_, C_, cl_);
    const Rep r = tp_rep_view(w_rep_, C_);
    BlockActs& a = acts(i);
    const float* x = xs_[sz(i)];
    float* out = xs_[sz(i) + 1];
    // Attention on the local heads: ln1 over the local rows; f (sp: all-gather, in (b, position)
    // order for the attention); the row-split projection's partial sums through g (all-reduce,
    // or reduce-scatter to the local rows).
    layernorm_forward(x, r.ln1_w, r.ln1_b, a.ln1, a.ln1_mean, a.ln1_rstd, nl, c, s());
    const bf16_t* ln1 = a.ln1;
    if (sp_) gather_rows(a.ln1, full16_, /*natural=*/true), ln1 = full16_;
    blas_.linear(ln1, p.qkv_w, p.qkv_b, a.qkv, n, c, 3 * cl, s());
    flash_attention_forward(a.qkv, a.qkv + cl, a.qkv + 2 * cl, a.atty, a.lse, B_ * static_cast<int>(hl_), T_, D_, s(),
                            layout());
    blas_.linear_f32(a.atty, p.proj_w, tmp_, n, cl, c, s());
    const float* y = through_g(/*natural=*/true);
    add_bias_residual(y, r.proj_b, x, a.res2, nl, c, s());
    // MLP: the column-split fc with GELU, the row-split fcproj's partial sums through g; row-wise,
    // so with sp it runs on the gathered rows in rank-major order as they come.
    layernorm_forward(a.res2, r.ln2_w, r.ln2_b, a.ln2, a.ln2_mean, a.ln2_rstd, nl, c, s());
    const bf16_t* ln2 = a.ln2;
    if (sp_) gather_rows(a.ln2, full16_, /*natural=*/false), ln2 = full16_;
    blas_.linear_gelu(ln2, p.fc_w, p.fc_b, a.fch, a.fch_gelu, n, c, 4 * cl, s());
    blas_.linear_f32(a.fch_gelu, p.fcproj_w, tmp_, n, 4 * cl, c, s());
    y = through_g(/*natural=*/false);
    add_bias_residual(y, r.fcproj_b, a.res2, out, nl, c, s());
  }
  // g's forward on the partial sums in tmp_ [N, C]: summed over t in place, or with sp
  // reduce-scattered into part_ (this rank's rows); returns where the sum is.
  const float* through_g(bool natural) {
    if (!sp_) {
      reduce_f32(tmp_, N_ * C_);
      return tmp_;
    }
    scatter_rows(tmp_, part_, natural);
    return part_;
  }

  // g's backward for a row-split GEMM: its bias gradient (the column sums of dres16_, over this
  // rank's rows with sp; summed over t with the rest of the rep unit) and the gradient of its
  // output over all N rows: dres16_ itself (the identity), or with sp the gathered rows.
  const bf16_t* through_g_backward(float* bias_grad, bool natural) {
    column_sum(dres16_, bias_grad, partial_, static_cast<int>(Nl_), static_cast<int>(C_), s());
    if (!sp_) return dres16_;
    gather_rows(dres16_, full16_, natural);
    return full16_;
  }
  // f's backward: the gradient at a column-split GEMM's input (dln_, all N rows) summed over t,
  // in place, or with sp reduce-scattered to this rank's rows; returns where it is.
  bf16_t* through_f_backward(bool natural) {
    if (!sp_) {
      reduce_bf16(dln_, N_ * C_);
      return dln_;
    }
    scatter_rows(dln_, dln_local_, natural);
    return dln_local_;
  }
  // A LayerNorm output's local rows gathered again (into the second gather buffer: the first
  // holds the gradient through_g_backward gathered).
  const bf16_t* gathered(const bf16_t* local, bool natural) {
    gather_rows(local, full16b_, natural);
    return full16b_;
  }

  // Sequence parallelism's row orders (TpPass's): rank k's local rows are positions
  // k*Tl .. (k+1)*Tl - 1 of every sequence; gathered rows come rank-major.
  size_t natural_row(size_t j) const {
    const size_t k = j / Nl_, rem = j % Nl_;
    return rem / Tl_ * sz(T_) + k * Tl_ + rem % Tl_;
  }
  void to_natural(const float* rank_major, float* natural) const {
    for (size_t j = 0; j < N_; ++j) std::memcpy(natural + natural_row(j) * C_, rank_major + j * C_, C_ * sizeof(float));
  }
  void to_rank_major(const float* natural, float* rank_major) const {
    for (size_t j = 0; j < N_; ++j) std::memcpy(rank_major + j * C_, natural + natural_row(j) * C_, C_ * sizeof(float));
  }
  // f's forward / g's backward: every rank's local rows [Nl, C] (bf16, exact in fp32) -> all N
  // rows on the device, rank-major or natural, through host memory.
  void gather_rows(const bf16_t* local, bf16_t* full, bool natural) {
    const size_t nc = Nl_ * C_, all = N_ * C_;
    down(h_bf16_.data(), local, nc);
    sync();
    for (size_t e = 0; e < nc; ++e) h_stage_[e] = ::mics::bf16_to_f32(h_bf16_[e]);
    ops_.all_gather(h_stage_.data(), natural ? h_gbuf_.data() : h_full_.data(), all);
    if (natural) to_natural(h_gbuf_.data(), h_full_.data());
    for (size_t e = 0; e < all; ++e) h_bf16_[e] = ::mics::f32_to_bf16(h_full_[e]);
    up(full, h_bf16_.data(), all);
    sync();  // h_bf16_ is reused by the next gather
  }
  // g's forward: the sum over the ranks of the fp32 partial sums `full` [N, C] (natural or
  // rank-major), this rank's rows of it into `local` [Nl, C].
  void scatter_rows(const float* full, float* local, bool natural) {
    down(h_full_.data(), full, N_ * C_);
    sync();
    const float* send = h_full_.data();
    if (natural) to_rank_major(h_full_.data(), h_gbuf_.data()), send = h_gbuf_.data();
    ops_.reduce_scatter(send, h_stage_.data(), N_ * C_);
    up(local, h_stage_.data(), Nl_ * C_);
    sync();
  }
  // f's backward: the same for a bf16 gradient, summed in fp32 and rounded to bf16 once.
  void scatter_rows(const bf16_t* full, bf16_t* local, bool natural) {
    const size_t all = N_ * C_, nc = Nl_ * C_;
    down(h_bf16_.data(), full, all);
    sync();
    for (size_t e = 0; e < all; ++e) h_full_[e] = ::mics::bf16_to_f32(h_bf16_[e]);
    const float* send = h_full_.data();
    if (natural) to_rank_major(h_full_.data(), h_gbuf_.data()), send = h_gbuf_.data();
    ops_.reduce_scatter(send, h_stage_.data(), all);
    for (size_t e = 0; e < nc; ++e) h_bf16_[e] = ::mics::f32_to_bf16(h_stage_[e]);
    up(local, h_bf16_.data(), nc);
    sync();
  }

  // A block's gathered parameters: fp32 (LayerNorms, the replicated biases) and the bf16 copy
  // the GEMMs read. Uploaded at every call: another micro-batch's pass may have run in between.
  void load_block(const float* split, const float* rep) {
    const size_t split_n = tp_split_numel(c_, slice_.size);
    up(w_split_, split, split_n);
    f32_to_bf16(w_split_, w_split16_, split_n, s());
    up(w_rep_, rep, tp_rep_numel(c_));
  }
  void ensure_head() {
    if (logits_) return;
    const size_t N = N_, C = C_, Nl = Nl_;
    const uint64_t b0 = mem_.bytes();
    lnf16_ = mem_.take<bf16_t>(Nl * C), lnf_mean_ = mem_.take<float>(Nl), lnf_rstd_ = mem_.take<float>(Nl);
    head_ln_bytes_ = mem_.bytes() - b0;
    logits_ = mem_.take<bf16_t>(N * ldv_), d_lse_ = mem_.take<float>(N);
    head_act_bytes_ = mem_.bytes() - b0;
    d_stats_ = mem_.take<float>(3 * N);
    w_wte_ = mem_.take<float>(vl_ * C), wte16_ = mem_.take<bf16_t>(vl_ * C), d_lnf_ = mem_.take<float>(2 * C);
    g_wte_ = mem_.take<float>(vl_ * C), g_lnf_ = mem_.take<float>(2 * C);
  }
  void load_head(const float* wte, const float* lnf) {
    ensure_head();
    up(w_wte_, wte, vl_ * C_);
    f32_to_bf16(w_wte_, wte16_, vl_ * C_, s());
    up(d_lnf_, lnf, 2 * C_);
  }

  // In place over the tensor group, through host memory (TensorOps runs on the host).
  void reduce_f32(float* device, size_t count, ReduceOp op = ReduceOp::kSum) {
    if (slice_.size == 1) return;
    down(h_stage_.data(), device, count);
    sync();
    ops_.all_reduce(h_stage_.data(), count, op);
    up(device, h_stage_.data(), count);
  }
  // A bf16 array summed in fp32 and rounded once.
  void reduce_bf16(bf16_t* device, size_t count) {
    if (slice_.size == 1) return;
    down(h_bf16_.data(), device, count);
    sync();
    for (size_t e = 0; e < count; ++e) h_stage_[e] = ::mics::bf16_to_f32(h_bf16_[e]);
    ops_.all_reduce(h_stage_.data(), count, ReduceOp::kSum);
    for (size_t e = 0; e < count; ++e) h_bf16_[e] = ::mics::f32_to_bf16(h_stage_[e]);
    up(device, h_bf16_.data(), count);
    sync();  // h_bf16_ is reused by the next reduce
  }

  GptConfig c_;
  TpSlice slice_;
  int B_, T_, blocks_, D_;
  size_t N_ = 0, C_ = 0, cl_ = 0, hl_ = 0, vl_ = 0, ldv_ = 0;
  TensorOps ops_;
  bool sp_ = false, recompute_ = false;
  size_t Nl_ = 0, Tl_ = 0;  // local rows and positions per sequence (N and T without sp)
  cudaStream_t stream_ = nullptr;
  Blas blas_;
  DeviceMemory mem_;
  std::vector<int32_t> inputs_, targets_;
  std::vector<float> h_input_, h_output_, h_grad_, h_stage_;
  std::vector<float> h_full_, h_gbuf_;  // sp: all N rows, and their other order
  std::vector<bf16_t> h_bf16_;
  mutable std::vector<float> h_logits_;
  int32_t *d_tokens_ = nullptr, *d_targets_ = nullptr;
  float *w_split_ = nullptr, *w_rep_ = nullptr, *g_split_ = nullptr, *g_rep_ = nullptr;
  bf16_t* w_split16_ = nullptr;
  std::vector<float*> xs_;  // xs_[i]: block i's input; xs_[blocks]: the stage's output
  std::vector<BlockActs> acts_;  // one per block, or one shared with recompute
  float *tmp_ = nullptr, *dres_ = nullptr, *partial_ = nullptr, *flash_scratch_ = nullptr;
  bf16_t *dres16_ = nullptr, *dln_ = nullptr, *datty_ = nullptr, *dqkv_ = nullptr, *dfch_ = nullptr;
  bf16_t *full16_ = nullptr, *full16b_ = nullptr, *dln_local_ = nullptr;  // sp only
  float* part_ = nullptr;                                                 // sp only
  // head (allocated by the first head_forward: only the last stage has one)
  bf16_t *lnf16_ = nullptr, *logits_ = nullptr, *wte16_ = nullptr;
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *d_lse_ = nullptr, *d_stats_ = nullptr, *w_wte_ = nullptr,
        *d_lnf_ = nullptr, *g_wte_ = nullptr, *g_lnf_ = nullptr;
  uint64_t act_bytes_ = 0, ln_region_bytes_ = 0, head_act_bytes_ = 0, head_ln_bytes_ = 0;
  bool grad_on_device_ = false;  // dres holds dL/d(output) from head_backward
  bool logits_fresh_ = false;
};

}  // namespace

std::string stage_unsupported_reason(const GptConfig& c, const TpOptions& options) {
  const int head_dim = c.heads > 0 ? c.channels / c.heads : 0;
  if (!flash_supported(head_dim))
    return "the GPU mesh stage runs the fused attention kernels, built for head sizes 64 and 128; this model's is " +
           std::to_string(head_dim) + " (C=" + std::to_string(c.channels) + " / H=" + std::to_string(c.heads) +
           "): choose C/H = 64 or 128 (e.g. --model L2H4C256), or --device cpu";
  (void)options;  // sequence parallelism and recompute are built for every stage
  return "";
}

std::unique_ptr<StagePass> make_stage_pass(const GptConfig& c, TpSlice slice, int batch, int seq_len, int blocks,
                                           TensorOps ops, TpOptions options) {
  const std::string why = stage_unsupported_reason(c, options);
  if (!why.empty())
    throw Error(ErrorKind::kInvalidArgument, why, {.layer = "model", .where = "CUDA mesh stage"});
  MICS_CHECK(slice.size >= 1 && c.heads % slice.size == 0 && c.vocab % slice.size == 0,
             "tensor parallel size must divide the heads and the vocabulary");
  MICS_CHECK(!options.sequence_parallel ||
                 (slice.size > 1 && seq_len % slice.size == 0 && ops.all_gather && ops.reduce_scatter),
             "sequence parallelism needs t > 1 dividing the sequence length, and the all-gather and reduce-scatter");
  return std::make_unique<CudaStagePass>(c, slice, batch, seq_len, blocks, std::move(ops), options);
}

}  // namespace mics::model::cuda
