// GPT-2 on one CUDA device (gpt_cuda.hpp). The sequence of kernels mirrors gpt_layers.cpp:
// the block forward and backward, the head and the embeddings, with the GEMMs in gemm.cu.
#include "model/cuda/gpt_cuda.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "model/cuda/check.cuh"
#include "model/cuda/cudnn_attention.hpp"
#include "model/cuda/gemm.hpp"
#include "model/cuda/kernels.hpp"
#include "model/gpt_layers.hpp"

namespace mics::model::cuda {

std::string device_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")";
  if (count == 0) return "no CUDA device: the runtime sees 0 GPUs";
  return "";
}

DeviceSummary device_summary() {
  DeviceSummary d;
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return d;
  d.name = prop.name;
  d.memory_bytes = prop.totalGlobalMem;
  // Dense bf16 peak of the SXM Hopper parts (H100 and H200 share the datasheet's 989 TFLOP/s);
  // other GPUs: quoted against the same figure, named as such.
  d.peak_bf16_tflops = 989.0;
  d.peak_note = (d.name.find("H100") != std::string::npos || d.name.find("H200") != std::string::npos)
                    ? "989 TFLOP/s dense bf16 (H100/H200 SXM datasheet)"
                    : "989 TFLOP/s (H100 SXM dense bf16; this GPU's own peak differs)";
  return d;
}

uint64_t device_memory_in_use() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
  return total_b - free_b;
}

namespace {

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// One device allocation carved into aligned pieces.
class Arena {
 public:
  void reserve(size_t bytes) { size_ += round_up(bytes, 256); }
  void allocate() { MICS_CUDA(cudaMalloc(&base_, size_ ? size_ : 256)); }
  template <typename T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + used_);
    used_ += round_up(count * sizeof(T), 256);
    MICS_CHECK(used_ <= size_, "arena overflow");
    return p;
  }
  size_t size() const { return size_; }
  ~Arena() {
    if (base_) cudaFree(base_);
  }

 private:
  void* base_ = nullptr;
  size_t size_ = 0, used_ = 0;
};

// A residual-stream buffer [N, C] in the stream's dtype (CudaOptions::residual_bf16): one of the
// two pointers set.
struct Residual {
  float* f32 = nullptr;
  bf16_t* b16 = nullptr;
};

struct LayerActs {
  Residual res;  // block input [N, C]
  bf16_t* ln1 = nullptr;
  float* ln1_mean = nullptr;
  float* ln1_rstd = nullptr;
  bf16_t* qkvh = nullptr;  // [3][B, H, T, D]
  bf16_t* att = nullptr;   // [BH, T, T] probabilities (GEMM path)
  float* lse = nullptr;    // [BH, T] (flash path)
  bf16_t* atty = nullptr;  // [N, C]
  Residual res2;
  bf16_t* ln2 = nullptr;
  float* ln2_mean = nullptr;
  float* ln2_rstd = nullptr;
  bf16_t* fch = nullptr;       // [N, 4C] before GELU
  bf16_t* fch_gelu = nullptr;  // [N, 4C]
};

}  // namespace

struct CudaGpt::Impl {
  GptConfig cfg;
  int B, T, C, H, D, L, V, Vp;
  // The head's GEMMs run over Vh columns: Vp (a multiple of 64, for fast GEMM tiles) when the
  // rows after wte in unit 0 (wpe, lnf) can stand in for the padding rows: their logits are
  // never read, their dlogits are zero (cross_entropy), so the weight gradient GEMM adds zeros
  // to the rows after dwte. Else V.
  int Vh;
  size_t N;
  CudaOptions opt;
  bool flash = false;                     // fused attention (cuDNN's or mics' kernels); else GEMMs
  std::unique_ptr<CudnnAttention> cudnn;  // cuDNN's fused SDPA, when it built for this shape
  std::string cudnn_fallback;             // why cuDNN's SDPA is not used, when asked for
  cudaStream_t stream = nullptr;
  Blas blas;
  // CudaOptions::overlap_weight_grads: the stream of the weight-gradient GEMMs (and the qkv/fc
  // bias sums), its cuBLASLt plans and workspace (a workspace is not shared by GEMMs that may run
  // at once), and the events that order the buffers both streams touch (weight_grad, bias_grad,
  // before_overwrite, join_side).
  bool overlap = false;
  cudaStream_t side = nullptr;
  Blas blas_side;
  cudaEvent_t ev_ready = nullptr, ev_dres = nullptr, ev_dfch = nullptr, ev_dqkv = nullptr, ev_join = nullptr;
  Arena arena;
  size_t nparams = 0;
  std::vector<size_t> offsets, unit_n;
  // parameters and optimizer state (one GPU)
  float *params = nullptr, *grads = nullptr, *m = nullptr, *v = nullptr;
  bf16_t* params_bf16 = nullptr;
  // sharded (opt.shard_pad > 0): unit 0's and two block slots' gathered params, unit 0's and
  // two blocks' gradients (block l's reduce-scatter reads one while block l-1's backward writes
  // the other), all padded to a multiple of shard_pad
  bool sharded = false;
  shard::UnitSource source;
  size_t pad0 = 0, padb = 0, work_bytes = 0;
  float *u0 = nullptr, *g0 = nullptr;
  float* gblk[2] = {nullptr, nullptr};
  bf16_t* u0_bf16 = nullptr;
  float* slot32[2] = {nullptr, nullptr};
  bf16_t* slot16[2] = {nullptr, nullptr};
  // activations
  std::vector<LayerActs> acts;
  Residual res_final;
  Residual recompute_out;
  bf16_t *lnf = nullptr, *logits = nullptr;
  float *lnf_mean = nullptr, *lnf_rstd = nullptr, *losses = nullptr;
  // scratch
  bf16_t *qkv = nullptr, *yh = nullptr, *dres_bf16 = nullptr, *dln = nullptr, *datty = nullptr, *dyh = nullptr,
         *dp = nullptr, *dqkvh = nullptr, *dqkv = nullptr, *dfch = nullptr;
  float* partial_side = nullptr;  // overlap: the side stream's column-sum partials (bias gradients)
  float *dres = nullptr, *partial = nullptr, *dx_colsum = nullptr, *flash_scratch = nullptr, *loss_sum = nullptr,
        *norm_sq = nullptr, *norm_partial = nullptr;
  int32_t *tokens = nullptr, *targets = nullptr;
  float* host_out = nullptr;  // pinned: loss sum, norm^2
  int micro = 0;
  // profiling
  struct Mark {
    std::string name;
    cudaEvent_t begin, end;
  };
  // CUDA graphs (CudaOptions::cuda_graphs): a micro-batch's forward and backward replayed as one
  // graph launch instead of ~40 launches per block. Two graphs: the first micro-batch after
  // zero_grads() writes the gradients, the later ones add (accumulate_grads()); each is captured
  // at its kind's second call, the first having run eagerly (cuBLASLt plans and autotuning,
  // cuDNN's plans: host work and synchronizations that a capture cannot hold).
  bool graphs = false;
  cudaGraphExec_t graph_exec[2] = {nullptr, nullptr};
  int graph_calls[2] = {0, 0};
  std::string graph_note;  // why the micro-batches run without graphs
  // Bits (side_bit) of the events the side stream recorded in this backward: a wait on one not
  // yet recorded is skipped (the backward before ended by joining the side stream, so it is
  // complete in stream order; under capture a wait on an event from outside it is not allowed).
  unsigned side_recorded = 0;
  std::vector<cudaEvent_t> event_pool;
  size_t events_used = 0;
  std::vector<Mark> marks;
  std::map<std::string, PhaseTime> profile;

  Impl(const GptConfig& c, int batch, int seq_len, CudaOptions o)
      : cfg(c), B(batch), T(seq_len), C(c.channels), H(c.heads), D(c.channels / c.heads), L(c.layers),
        V(c.vocab), Vp(static_cast<int>(round_up(static_cast<size_t>(c.vocab), 64))),
        N(static_cast<size_t>(batch) * seq_len), opt(o) {
    Vh = Vp - V <= c.max_seq ? Vp : V;
    cfg.validate();
    if (C % 8 != 0 || D % 8 != 0)
      throw Error(ErrorKind::kInvalidArgument,
                  "the CUDA model needs channels and head size that are multiples of 8 (C" + std::to_string(C) +
                      " H" + std::to_string(H) + ": head " + std::to_string(D) + ")",
                  {.layer = "model", .where = "CudaGpt", .hint = "choose C and H with C % 8 == 0 and (C/H) % 8 == 0"});
    if (T > cfg.max_seq || T < 1 || B < 1)
      throw Error(ErrorKind::kInvalidArgument, "batch " + std::to_string(B) + " x seq_len " + std::to_string(T) + " (context " +
                      std::to_string(cfg.max_seq) + ")",
                  {.layer = "model", .where = "CudaGpt", .hint = "use 1 <= seq_len <= the model's context"});
    flash = opt.flash_attention && flash_supported(D);
    if (opt.flash_attention && opt.cudnn_attention) {
      // cuDNN's SDPA where it builds; mics' own fused kernels otherwise (the reason is kept
      // and printed with the attention kind).
      try {
        cudnn = std::make_unique<CudnnAttention>(B * H, T, D, flash_layout(), opt.cudnn_deterministic);
        flash = true;
      } catch (const Error& e) {
        cudnn_fallback = e.message();
      }
    }
    blas.set_fused_epilogues(opt.fused_epilogues);
    blas.set_autotune(opt.gemm_autotune);
    MICS_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    // not sharded: each unit's gradient is reduce-scattered as soon as its backward is done
    overlap = opt.overlap_weight_grads && !opt.recompute && !opt.profile && opt.shard_pad == 0;
    if (overlap) {
      MICS_CUDA(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
      for (cudaEvent_t* e : {&ev_ready, &ev_dres, &ev_dfch, &ev_dqkv, &ev_join})
        MICS_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
      blas_side.set_fused_epilogues(opt.fused_epilogues);
      blas_side.set_autotune(opt.gemm_autotune);
    }
    graphs = opt.cuda_graphs && opt.shard_pad == 0 && !opt.profile;
    if (!opt.cuda_graphs)
      graph_note = "off (MICS_CUDA_GRAPHS=0)";
    else if (opt.shard_pad != 0)
      graph_note = "off (sharded: the engine's collectives run between the units)";
    else if (opt.profile)
      graph_note = "off (MICS_CUDA_PROFILE=1 times each kernel kind with events)";
    // flat parameter layout: unit 0 then the blocks (gpt.hpp)
    const Gpt gpt(cfg);
    for (int u = 0; u < gpt.num_units(); ++u) {
      offsets.push_back(nparams);
      unit_n.push_back(gpt.unit_numel(u));
      nparams += gpt.unit_numel(u);
    }
    sharded = opt.shard_pad > 0;
    if (sharded) {
      const size_t k = static_cast<size_t>(opt.shard_pad);
      pad0 = round_up(unit_n[0], k);
      padb = L > 0 ? round_up(unit_n[1], k) : 0;
      // as the arena rounds them
      work_bytes = 2 * round_up(pad0 * 4, 256) + round_up(pad0 * 2, 256) + 4 * round_up(padb * 4, 256) +
                   2 * round_up(padb * 2, 256);
    }
    const size_t bh = static_cast<size_t>(B) * H;
    const size_t nc = N * C;
    auto plan = [&](bool take) {
      auto f = [&](size_t n) { return take ? arena.take<float>(n) : (arena.reserve(n * 4), nullptr); };
      auto h = [&](size_t n) { return take ? arena.take<bf16_t>(n) : (arena.reserve(n * 2), nullptr); };
      auto r = [&](size_t n) { return opt.residual_bf16 ? Residual{nullptr, h(n)} : Residual{f(n), nullptr}; };
      if (sharded) {
        u0 = f(pad0);
        u0_bf16 = h(pad0);  // padded: a bf16 gather fills the whole unit
        g0 = f(pad0);
        for (int i = 0; i < 2; ++i) {
          slot32[i] = f(padb);
          slot16[i] = h(padb);
        }
        for (float*& g : gblk) g = f(padb);
      } else {
        params = f(nparams);
        grads = f(nparams);
        m = f(nparams);
        v = f(nparams);
        params_bf16 = h(nparams);
      }
      // With recompute every block keeps only its input (res); the rest is one shared set
      // (acts[0]'s), refilled by rerunning the block's forward before its backward.
      acts.assign(static_cast<size_t>(L), LayerActs{});
      for (auto& a : acts) {
        a.res = r(nc);
        if (opt.recompute && &a != &acts.front()) continue;
        a.ln1 = h(nc);
        a.ln1_mean = f(N);
        a.ln1_rstd = f(N);
        a.qkvh = h(3 * nc);
        if (flash)
          a.lse = f(bh * T);
        else
          a.att = h(bh * T * T);
        a.atty = h(nc);
        a.res2 = r(nc);
        a.ln2 = h(nc);
        a.ln2_mean = f(N);
        a.ln2_rstd = f(N);
        a.fch = h(4 * nc);
        a.fch_gelu = h(4 * nc);
      }
      res_final = r(nc);
      if (opt.recompute) recompute_out = r(nc);  // the rerun block's output (the real one is kept)
      lnf = h(nc);
      lnf_mean = f(N);
      lnf_rstd = f(N);
      logits = h(N * static_cast<size_t>(Vp));
      losses = f(N);
      if (!flash) {  // the GEMM attention's head-major copies
        qkv = h(3 * nc);
        yh = h(nc);
        dyh = h(nc);
        dp = h(bh * T * T);
        dqkvh = h(3 * nc);
      }
      dres_bf16 = h(nc);
      dln = h(nc);
      datty = h(nc);
      dqkv = h(3 * nc);
      dfch = h(4 * nc);
      if (!opt.residual_grad_bf16) dres = f(nc);  // else the gradient lives in dres_bf16 alone
      const size_t part = std::max(layernorm_partial_floats(static_cast<int>(N), C),
                                   colsum_partial_floats(static_cast<int>(N), 4 * C));
      partial = f(part);
      dx_colsum = f(layernorm_colsum_partial_floats(static_cast<int>(N), C));
      if (overlap) partial_side = f(colsum_partial_floats(static_cast<int>(N), 4 * C));
      if (flash && !cudnn) flash_scratch = f(flash_scratch_floats(static_cast<int>(bh), T, D));
      loss_sum = f(1);
      norm_sq = f(1);
      norm_partial = f(sum_squares_partial_floats());
      tokens = take ? arena.take<int32_t>(N) : (arena.reserve(N * 4), nullptr);
      targets = take ? arena.take<int32_t>(N) : (arena.reserve(N * 4), nullptr);
    };
    plan(false);
    arena.allocate();
    plan(true);
    MICS_CUDA(cudaMallocHost(&host_out, 2 * sizeof(float)));
    for (float* f : {m, v, params, grads})
      if (f) MICS_CUDA(cudaMemsetAsync(f, 0, nparams * 4, stream));
    MICS_CUDA(cudaMemsetAsync(loss_sum, 0, 4, stream));
  }

  ~Impl() {
    for (cudaEvent_t e : event_pool) cudaEventDestroy(e);
    if (host_out) cudaFreeHost(host_out);
    for (cudaGraphExec_t g : graph_exec)
      if (g) cudaGraphExecDestroy(g);
    if (stream) cudaStreamDestroy(stream);
    for (cudaEvent_t e : {ev_ready, ev_dres, ev_dfch, ev_dqkv, ev_join})
      if (e) cudaEventDestroy(e);
    if (side) cudaStreamDestroy(side);
  }

  Stream s() const { return stream; }

  // --- profiling marks ---
  cudaEvent_t next_event() {
    if (events_used == event_pool.size()) {
      cudaEvent_t e;
      MICS_CUDA(cudaEventCreate(&e));
      event_pool.push_back(e);
    }
    return event_pool[events_used++];
  }
  struct Scope {
    Impl* impl;
    size_t index;
    Scope(Impl* i, const char* name) : impl(i), index(SIZE_MAX) {
      if (!impl->opt.profile) return;
      Mark mk{name, impl->next_event(), impl->next_event()};
      MICS_CUDA(cudaEventRecord(mk.begin, impl->stream));
      impl->marks.push_back(mk);
      index = impl->marks.size() - 1;
    }
    ~Scope() {
      if (index != SIZE_MAX) cudaEventRecord(impl->marks[index].end, impl->stream);
    }
  };
  void collect_profile() {  // after a synchronize
    for (const Mark& mk : marks) {
      float ms = 0;
      MICS_CUDA(cudaEventElapsedTime(&ms, mk.begin, mk.end));
      PhaseTime& p = profile[mk.name];
      p.name = mk.name;
      p.ms += ms;
      ++p.calls;
    }
    marks.clear();
    events_used = 0;
  }

  // --- parameter views ---
  // Unit u's parameters and gradients: slices of the full arrays on one GPU; sharded, the
  // working buffers (blocks alternate between two slots: the current one and the prefetched).
  float* unit_f32(int u) const {
    if (!sharded) return params + offsets[static_cast<size_t>(u)];
    return u == 0 ? u0 : slot32[(u - 1) % 2];
  }
  bf16_t* unit_bf16(int u) const {
    if (!sharded) return params_bf16 + offsets[static_cast<size_t>(u)];
    return u == 0 ? u0_bf16 : slot16[(u - 1) % 2];
  }
  float* unit_grad(int u) const {
    if (!sharded) return grads + offsets[static_cast<size_t>(u)];
    return u == 0 ? g0 : gblk[(u - 1) % 2];
  }
  // Sharded: start gathering unit u (its slot's last reader is the work enqueued so far) ...
  void fetch(int u) {
    if (sharded) source.gather(u, unit_f32(u), unit_bf16(u), stream);
  }
  // ... and, right before its compute, wait for it and make its bf16 copy.
  void ready(int u) {
    if (!sharded) return;
    Scope sc(this, source.bf16_gathers ? "gathered unit to f32" : "gathered unit to bf16");
    source.wait(u, stream);
    // the GEMMs read the bf16 copy; LayerNorm weights and some biases the fp32 one
    if (source.bf16_gathers)
      bf16_to_f32(unit_bf16(u), unit_f32(u), unit_n[static_cast<size_t>(u)], stream);
    else
      f32_to_bf16(unit_f32(u), unit_bf16(u), unit_n[static_cast<size_t>(u)], stream);
  }
  // Sharded: unit u's gradient is complete: reduce-scatter it (the stream waits for it).
  void reduce(int u) {
    if (sharded) source.reduce(u, unit_grad(u), stream);
  }
  void require_full(const char* what) const {
    if (sharded)
      throw Error(ErrorKind::kInvalidArgument, std::string(what) + " on a sharded CudaGpt (no full parameter arrays)",
                  {.layer = "model", .where = "CudaGpt", .hint = "the sharded engine holds the parameters"});
  }
  // After zero_grads() (or at start) and before a backward, the gradients read as zero.
  void clear_unwritten_grads() const {
    if (grads && micro == 0) MICS_CUDA(cudaMemsetAsync(grads, 0, nparams * 4, stream));
  }
  // Sharded: the buffer's last reduce-scatter must have read it before it is zeroed.
  void zero_unit_grad(int u) {
    if (!sharded) return;
    source.reuse(unit_grad(u), stream);
    MICS_CUDA(cudaMemsetAsync(unit_grad(u), 0, (u == 0 ? pad0 : padb) * 4, stream));
  }
  // dw from dout and in: on the side stream once the main stream has produced dout (done is
  // recorded after it: the main stream waits on it before it overwrites dout), else in line.
  // GPT-2 124M B16 on an H200: +1.3% tokens/s (three interleaved rounds, 544.2K -> 550.4K). The
  // head's GEMM also writes the padding rows after wte's gradient (Vh): those are wpe's, which
  // only the embedding's backward writes, after join_side().
  void weight_grad(const bf16_t* dout, int ld, const bf16_t* in, float* dw, int n, int ic, int oc, cudaEvent_t done) {
    if (!overlap) {
      blas.linear_backward_weight(dout, ld, in, dw, n, ic, oc, s(), accumulate_grads());
      return;
    }
    MICS_CUDA(cudaEventRecord(ev_ready, stream));
    MICS_CUDA(cudaStreamWaitEvent(side, ev_ready, 0));
    blas_side.linear_backward_weight(dout, ld, in, dw, n, ic, oc, side, accumulate_grads());
    MICS_CUDA(cudaEventRecord(done, side));
    side_recorded |= side_bit(done);
  }
  // db from dout [n, oc] (its column sums), right after weight_grad() from the same dout: on the
  // side stream behind that GEMM (done recorded again after it), else in line. On the side: +0.6%
  // and +0.9% tokens/s (GPT-2 124M B16 on an H200, two calls of three interleaved rounds).
  void bias_grad(const bf16_t* dout, float* db, int n, int oc, cudaEvent_t done) {
    if (!overlap) {
      Scope sc(this, "bias grads");
      column_sum(dout, db, partial, n, oc, s(), accumulate_grads());
      return;
    }
    column_sum(dout, db, partial_side, n, oc, side, accumulate_grads());
    MICS_CUDA(cudaEventRecord(done, side));
    side_recorded |= side_bit(done);
  }
  unsigned side_bit(cudaEvent_t e) const { return e == ev_dres ? 1u : e == ev_dfch ? 2u : e == ev_dqkv ? 4u : 8u; }
  // Before the main stream overwrites a buffer a side GEMM reads (in this backward).
  void before_overwrite(cudaEvent_t done) {
    if (overlap && (side_recorded & side_bit(done))) MICS_CUDA(cudaStreamWaitEvent(stream, done, 0));
  }
  // The end of a backward: the main stream waits for every side GEMM.
  void join_side() {
    if (!overlap) return;
    MICS_CUDA(cudaEventRecord(ev_join, side));
    MICS_CUDA(cudaStreamWaitEvent(stream, ev_join, 0));
  }
  layers::EmbedTensors<float> embed_f32() const { return layers::embed_tensors(unit_f32(0), V, cfg.max_seq, C); }
  layers::EmbedTensors<bf16_t> embed_bf16() const { return layers::embed_tensors(unit_bf16(0), V, cfg.max_seq, C); }
  layers::EmbedTensors<float> embed_grad() const { return layers::embed_tensors(unit_grad(0), V, cfg.max_seq, C); }
  layers::BlockTensors<float> block_f32(int l) const { return layers::block_tensors(unit_f32(1 + l), C); }
  layers::BlockTensors<bf16_t> block_bf16(int l) const { return layers::block_tensors(unit_bf16(1 + l), C); }
  layers::BlockTensors<float> block_grad(int l) const { return layers::block_tensors(unit_grad(1 + l), C); }

  void upload_tokens(const int32_t* in, const int32_t* tg) {
    MICS_CUDA(cudaMemcpyAsync(tokens, in, N * 4, cudaMemcpyHostToDevice, stream));
    if (tg) MICS_CUDA(cudaMemcpyAsync(targets, tg, N * 4, cudaMemcpyHostToDevice, stream));
  }

  // --- attention ---
  // The fused kernels read q, k, v straight from the qkv GEMM's [B, T, 3, H, D] output (kept
  // per layer in a.qkvh) and write y as [N, C]; the GEMM path splits heads first.
  FlashLayout flash_layout() const { return {H, 3 * C, C}; }

  void attention_forward(const LayerActs& a) {
    const int bh = B * H;
    const size_t plane = N * C;
    if (cudnn) {
      cudnn->forward(a.qkvh, a.qkvh + C, a.qkvh + 2 * C, a.atty, a.lse, s());
      return;
    }
    if (flash) {
      flash_attention_forward(a.qkvh, a.qkvh + C, a.qkvh + 2 * C, a.atty, a.lse, bh, T, D, s(), flash_layout());
      return;
    }
    attention_split_heads(qkv, a.qkvh, B, T, H, D, s());
    const bf16_t *q = a.qkvh, *k = a.qkvh + plane, *vv = a.qkvh + 2 * plane;
    {
      const float scale = 1.0f / std::sqrt(static_cast<float>(D));
      const long long sqkv = static_cast<long long>(T) * D, ss = static_cast<long long>(T) * T;
      // S^T (keys x queries, column-major) = K Q^T: row-major S [Tq, Tk].
      blas.batched({true, false, T, T, D, k, D, sqkv, q, D, sqkv, a.att, T, ss, bh, scale}, s());
      causal_softmax(a.att, bh, T, s());
      // Y^T (D x Tq) = V^T P^T.
      blas.batched({false, false, D, T, T, vv, D, sqkv, a.att, T, ss, yh, D, sqkv, bh, 1.0f}, s());
    }
    attention_permute(yh, a.atty, B, T, H, D, /*to_heads=*/false, s());
  }

  void attention_backward(const LayerActs& a) {
    const int bh = B * H;
    const size_t plane = N * C;
    if (cudnn) {
      cudnn->backward(a.qkvh, a.qkvh + C, a.qkvh + 2 * C, a.atty, datty, a.lse, dqkv, dqkv + C, dqkv + 2 * C, s());
      return;
    }
    if (flash) {
      flash_attention_backward(a.qkvh, a.qkvh + C, a.qkvh + 2 * C, a.atty, datty, a.lse, dqkv, dqkv + C,
                               dqkv + 2 * C, flash_scratch, bh, T, D, s(), opt.flash_bwd_stages, flash_layout(),
                               opt.flash_bwd_min_blocks, opt.flash_bwd_key_tile);
      return;
    }
    const bf16_t *q = a.qkvh, *k = a.qkvh + plane, *vv = a.qkvh + 2 * plane;
    bf16_t *dq = dqkvh, *dk = dqkvh + plane, *dv = dqkvh + 2 * plane;
    attention_permute(datty, dyh, B, T, H, D, /*to_heads=*/true, s());
    {
      const float scale = 1.0f / std::sqrt(static_cast<float>(D));
      const long long sqkv = static_cast<long long>(T) * D, ss = static_cast<long long>(T) * T;
      // dP (row-major [Tq, Tk]) = dY V^T
      blas.batched({true, false, T, T, D, vv, D, sqkv, dyh, D, sqkv, dp, T, ss, bh, 1.0f}, s());
      causal_softmax_backward(a.att, dp, bh, T, scale, s());
      // dQ = dS K ; dK = dS^T Q ; dV = P^T dY
      blas.batched({false, false, D, T, T, k, D, sqkv, dp, T, ss, dq, D, sqkv, bh, 1.0f}, s());
      blas.batched({false, true, D, T, T, q, D, sqkv, dp, T, ss, dk, D, sqkv, bh, 1.0f}, s());
      blas.batched({false, true, D, T, T, dyh, D, sqkv, a.att, T, ss, dv, D, sqkv, bh, 1.0f}, s());
    }
    attention_merge_qkv(dqkvh, dqkv, B, T, H, D, s());
  }

  // --- the residual stream, in its dtype (CudaOptions::residual_bf16) ---
  void ln_forward(Residual x, const float* w, const float* b, bf16_t* out, float* mean, float* rstd) {
    const int n = static_cast<int>(N);
    if (x.b16)
      layernorm_forward(x.b16, w, b, out, mean, rstd, n, C, s());
    else
      layernorm_forward(x.f32, w, b, out, mean, rstd, n, C, s());
  }
  // out = in w^T + bias + res over [N, C] (in: [N, ic]); the fp32 stream adds the fp32 bias, the
  // bf16 stream the bf16 copy.
  void residual_linear(const bf16_t* in, const bf16_t* w, const float* bias32, const bf16_t* bias16, Residual res,
                       Residual out, int ic) {
    const int n = static_cast<int>(N);
    if (res.b16)
      blas.linear_residual(in, w, bias16, res.b16, out.b16, n, ic, C, s());
    else
      blas.linear_residual(in, w, bias32, res.f32, out.f32, n, ic, C, s());
  }
  // LayerNorm backward from dln into the residual gradient (dres / dres_bf16), x the forward's
  // input; returns the dx column-sum chunks (layernorm_backward).
  int ln_backward(Residual x, const float* mean, const float* rstd, const float* w, float* dw, float* db,
                  float* colsum) {
    const int n = static_cast<int>(N);
    if (x.b16)
      return layernorm_backward(dln, x.b16, mean, rstd, w, dres, dres_bf16, dw, db, partial, n, C, s(), colsum,
                                accumulate_grads());
    return layernorm_backward(dln, x.f32, mean, rstd, w, dres, dres_bf16, dw, db, partial, n, C, s(), colsum,
                              accumulate_grads());
  }

  // Block l's activations: its own, or with recompute its input and the shared set.
  LayerActs layer(int l) const {
    if (!opt.recompute) return acts[static_cast<size_t>(l)];
    LayerActs a = acts.front();
    a.res = acts[static_cast<size_t>(l)].res;
    return a;
  }

  // Block l's forward from a.res into out, keeping its activations in a (its parameters ready).
  void block_forward(int l, const LayerActs& a, Residual out) {
    const int n = static_cast<int>(N);
    const auto p32 = block_f32(l);
    const auto p16 = block_bf16(l);
    {
      Scope sc(this, "layernorm fwd");
      ln_forward(a.res, p32.ln1_w, p32.ln1_b, a.ln1, a.ln1_mean, a.ln1_rstd);
    }
    {
      Scope sc(this, "gemm qkv fwd");
      blas.linear(a.ln1, p16.qkv_w, p16.qkv_b, flash ? a.qkvh : qkv, n, C, 3 * C, s());
    }
    {
      Scope sc(this, "attention fwd");
      attention_forward(a);
    }
    {
      Scope sc(this, "gemm proj fwd (+residual)");
      residual_linear(a.atty, p16.proj_w, p32.proj_b, p16.proj_b, a.res, a.res2, C);
    }
    {
      Scope sc(this, "layernorm fwd");
      ln_forward(a.res2, p32.ln2_w, p32.ln2_b, a.ln2, a.ln2_mean, a.ln2_rstd);
    }
    {
      Scope sc(this, "gemm fc fwd (+gelu)");
      blas.linear_gelu(a.ln2, p16.fc_w, p16.fc_b, a.fch, a.fch_gelu, n, C, 4 * C, s());
    }
    {
      Scope sc(this, "gemm fcproj fwd (+residual)");
      residual_linear(a.fch_gelu, p16.fcproj_w, p32.fcproj_b, p16.fcproj_b, a.res2, out, 4 * C);
    }
  }

  // --- forward ---
  void forward(bool grad) {
    const int n = static_cast<int>(N);
    if (sharded && !source.gather)
      throw Error(ErrorKind::kInvalidArgument, "a sharded CudaGpt without a unit source",
                  {.layer = "model", .where = "CudaGpt", .hint = "call set_unit_source() first"});
    fetch(0);
    ready(0);
    const auto e32 = embed_f32();
    {
      Scope sc(this, "embedding fwd");
      const Residual out = L > 0 ? acts[0].res : res_final;
      if (out.b16)
        embedding_forward(tokens, e32.wte, e32.wpe, out.b16, B, T, C, s());
      else
        embedding_forward(tokens, e32.wte, e32.wpe, out.f32, B, T, C, s());
    }
    fetch(L > 0 ? 1 : 0);  // unit 0 released; the first block (or the head's unit 0) next
    for (int l = 0; l < L; ++l) {
      ready(1 + l);
      fetch(l + 1 < L ? 2 + l : 0);  // prefetch: the next block, or unit 0 for the head
      block_forward(l, layer(l), l + 1 < L ? acts[static_cast<size_t>(l) + 1].res : res_final);
    }
    ready(0);  // the head's copy, kept for the head's backward
    const auto e16 = embed_bf16();
    {
      Scope sc(this, "layernorm fwd");
      ln_forward(res_final, e32.lnf_w, e32.lnf_b, lnf, lnf_mean, lnf_rstd);
    }
    {
      Scope sc(this, "gemm logits fwd");
      blas.linear_ld(lnf, e16.wte, logits, Vp, n, C, Vh, s());
    }
    {
      Scope sc(this, "cross-entropy fwd+bwd");
      cross_entropy(logits, targets, losses, n, V, Vp, grad, 1.0f / static_cast<float>(N), s());
      sum_losses(losses, n, loss_sum, s());
    }
  }

  // Every gradient writer (weight GEMMs, bias and LayerNorm sums, wpe) adds to the gradients
  // unless these are still zero (sharded: zeroed per unit and backward; else the first
  // micro-batch since zero_grads(), which therefore need not clear them): then it writes them,
  // and cuBLASLt does not read C (1-7% faster for the block GEMMs of GPT-2 124M on an H200).
  bool accumulate_grads() const { return !(sharded || micro == 0); }

  // One micro-batch's forward and backward (its tokens uploaded): eagerly, or as a graph launch.
  void run_micro_batch() {
    const int kind = accumulate_grads() ? 1 : 0;
    if (graphs && graph_calls[kind]++ > 0) {
      if (!graph_exec[kind]) capture(kind);
      if (graph_exec[kind]) {
        MICS_CUDA(cudaGraphLaunch(graph_exec[kind], stream));
        return;
      }
    }
    forward(/*grad=*/true);
    backward();
  }
  // Records the micro-batch into graph_exec[kind] (nothing runs). A capture that fails (an API
  // the capture cannot hold, in a library's call) turns graphs off with the reason kept for
  // graph_status(); the caller then runs the micro-batch eagerly.
  void capture(int kind) {
    MICS_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    std::string failure;
    try {
      forward(/*grad=*/true);
      backward();
    } catch (const Error& e) {
      failure = e.message();
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    if (failure.empty() && ended != cudaSuccess)
      failure = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(ended);
    if (failure.empty()) {
      const cudaError_t made = cudaGraphInstantiate(&graph_exec[kind], graph, 0);
      if (made != cudaSuccess) {
        failure = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(made);
        graph_exec[kind] = nullptr;
      }
    }
    if (graph) cudaGraphDestroy(graph);
    if (failure.empty()) return;
    (void)cudaGetLastError();  // a failed capture's error is not sticky
    for (cudaGraphExec_t& g : graph_exec)
      if (g) cudaGraphExecDestroy(g), g = nullptr;
    graphs = false;
    graph_note = "off (capture failed: " + failure + ")";
  }

  // --- backward ---
  void backward() {
    side_recorded = 0;
    const int n = static_cast<int>(N);
    const auto e32 = embed_f32();
    const auto e16 = embed_bf16();
    const auto eg = embed_grad();
    // The proj and fcproj bias gradients are column sums of the residual stream's gradient right
    // after a LayerNorm backward wrote it: that kernel sums them on the way (dx_colsum). ln2's
    // are proj's, added at once; ln1's (and lnf's) are the block below's fcproj's, added after
    // that block's gradient is zeroed (sharded), at its turn: pending_bias_chunks.
    int pending_bias_chunks = 0;
    zero_unit_grad(0);
    if (L > 0) fetch(L);  // the last block, gathered again for its backward
    {
      Scope sc(this, "gemm logits bwd");
      blas.linear_backward_input(logits, Vp, e16.wte, nullptr, dln, n, C, Vh, s());
      weight_grad(logits, Vp, lnf, eg.wte, n, C, Vh, ev_join);  // waited for by join_side()
    }
    {
      Scope sc(this, "layernorm bwd");
      // (the previous backward's side reads of dres_bf16 ended with its join_side())
      if (dres)
        MICS_CUDA(cudaMemsetAsync(dres, 0, N * C * 4, stream));
      else
        MICS_CUDA(cudaMemsetAsync(dres_bf16, 0, N * C * 2, stream));
      pending_bias_chunks =
          ln_backward(res_final, lnf_mean, lnf_rstd, e32.lnf_w, eg.lnf_w, eg.lnf_b, L > 0 ? dx_colsum : nullptr);
    }
    for (int l = L - 1; l >= 0; --l) {
      const LayerActs a = layer(l);
      ready(1 + l);
      if (l > 0) fetch(l);
      // Recompute: the block's forward again (its kernels count under the forward kinds of the
      // profile, twice the calls), into the shared activations and a scratch output.
      if (opt.recompute) block_forward(l, a, recompute_out);
      zero_unit_grad(1 + l);
      const auto p32 = block_f32(l);
      const auto p16 = block_bf16(l);
      const auto g = block_grad(l);
      {
        Scope sc(this, "gemm fcproj bwd (+dgelu)");
        before_overwrite(ev_dfch);
        blas.linear_backward_input(dres_bf16, C, p16.fcproj_w, a.fch, dfch, n, 4 * C, C, s());
        weight_grad(dres_bf16, C, a.fch_gelu, g.fcproj_w, n, 4 * C, C, ev_dres);
      }
      {
        Scope sc(this, "bias grads");
        add_column_partials(dx_colsum, pending_bias_chunks, C, g.fcproj_b, s(), accumulate_grads());
      }
      {
        Scope sc(this, "gemm fc bwd");
        blas.linear_backward_input(dfch, 4 * C, p16.fc_w, nullptr, dln, n, C, 4 * C, s());
        weight_grad(dfch, 4 * C, a.ln2, g.fc_w, n, C, 4 * C, ev_dfch);
      }
      bias_grad(dfch, g.fc_b, n, 4 * C, ev_dfch);
      {
        Scope sc(this, "layernorm bwd");
        before_overwrite(ev_dres);
        const int chunks = ln_backward(a.res2, a.ln2_mean, a.ln2_rstd, p32.ln2_w, g.ln2_w, g.ln2_b, dx_colsum);
        add_column_partials(dx_colsum, chunks, C, g.proj_b, s(), accumulate_grads());
      }
      {
        Scope sc(this, "gemm proj bwd");
        blas.linear_backward_input(dres_bf16, C, p16.proj_w, nullptr, datty, n, C, C, s());
        weight_grad(dres_bf16, C, a.atty, g.proj_w, n, C, C, ev_dres);
      }
      {
        Scope sc(this, "attention bwd");
        before_overwrite(ev_dqkv);
        attention_backward(a);
      }
      {
        Scope sc(this, "gemm qkv bwd");
        blas.linear_backward_input(dqkv, 3 * C, p16.qkv_w, nullptr, dln, n, C, 3 * C, s());
        weight_grad(dqkv, 3 * C, a.ln1, g.qkv_w, n, C, 3 * C, ev_dqkv);
      }
      bias_grad(dqkv, g.qkv_b, n, 3 * C, ev_dqkv);
      {
        Scope sc(this, "layernorm bwd");
        before_overwrite(ev_dres);
        pending_bias_chunks =
            ln_backward(a.res, a.ln1_mean, a.ln1_rstd, p32.ln1_w, g.ln1_w, g.ln1_b, l > 0 ? dx_colsum : nullptr);
      }
      reduce(1 + l);
    }
    {
      Scope sc(this, "embedding bwd");
      join_side();  // wte's gradient: the logits GEMM's (side) before the embedding's (here)
      if (dres)
        embedding_backward(tokens, dres, eg.wte, eg.wpe, B, T, C, s(), accumulate_grads(), cfg.max_seq);
      else
        embedding_backward(tokens, dres_bf16, eg.wte, eg.wpe, B, T, C, s(), accumulate_grads(), cfg.max_seq);
    }
    reduce(0);
  }
};

CudaGpt::CudaGpt(const GptConfig& config, int batch, int seq_len, CudaOptions options)
    : impl_(std::make_unique<Impl>(config, batch, seq_len, options)) {}
CudaGpt::~CudaGpt() = default;

size_t CudaGpt::num_params() const { return impl_->nparams; }
size_t CudaGpt::unit_offset(int unit) const { return impl_->offsets.at(static_cast<size_t>(unit)); }

void CudaGpt::upload_params(const float* host) {
  Impl& s = *impl_;
  s.require_full("upload_params");
  MICS_CUDA(cudaMemcpyAsync(s.params, host, s.nparams * 4, cudaMemcpyHostToDevice, s.stream));
  f32_to_bf16(s.params, s.params_bf16, s.nparams, s.stream);
  MICS_CUDA(cudaStreamSynchronize(s.stream));
}

void CudaGpt::download_params(float* host) const {
  impl_->require_full("download_params");
  MICS_CUDA(cudaMemcpyAsync(host, impl_->params, impl_->nparams * 4, cudaMemcpyDeviceToHost, impl_->stream));
  MICS_CUDA(cudaStreamSynchronize(impl_->stream));
}

void CudaGpt::upload_moments(const float* exp_avg, const float* exp_avg_sq) {
  Impl& s = *impl_;
  s.require_full("upload_moments");
  MICS_CUDA(cudaMemcpyAsync(s.m, exp_avg, s.nparams * 4, cudaMemcpyHostToDevice, s.stream));
  MICS_CUDA(cudaMemcpyAsync(s.v, exp_avg_sq, s.nparams * 4, cudaMemcpyHostToDevice, s.stream));
  MICS_CUDA(cudaStreamSynchronize(s.stream));
}

void CudaGpt::download_state(int which, size_t offset, size_t count, float* host) const {
  const Impl& s = *impl_;
  s.require_full("download_state");
  MICS_CHECK(which >= 0 && which <= 2 && offset + count <= s.nparams, "download_state: out of range");
  const float* src = which == 0 ? s.params : which == 1 ? s.m : s.v;
  MICS_CUDA(cudaMemcpyAsync(host, src + offset, count * 4, cudaMemcpyDeviceToHost, s.stream));
  MICS_CUDA(cudaStreamSynchronize(s.stream));
}

void CudaGpt::download_grads(float* host) const {
  impl_->require_full("download_grads");
  impl_->clear_unwritten_grads();
  MICS_CUDA(cudaMemcpyAsync(host, impl_->grads, impl_->nparams * 4, cudaMemcpyDeviceToHost, impl_->stream));
  MICS_CUDA(cudaStreamSynchronize(impl_->stream));
}

// The gradients are not cleared here: the next backward writes every one of them (its first
// micro-batch's writers do not add: accumulate_grads()), which saves a pass over them (0.15 ms
// per step for GPT-2 124M on an H200). Reading them before that backward clears them first.
void CudaGpt::zero_grads() {
  Impl& s = *impl_;
  MICS_CUDA(cudaMemsetAsync(s.loss_sum, 0, 4, s.stream));
  s.micro = 0;
}

void CudaGpt::set_unit_source(shard::UnitSource source) {
  if (!impl_->sharded)
    throw Error(ErrorKind::kInvalidArgument, "set_unit_source on a CudaGpt built without shard_pad",
                {.layer = "model", .where = "CudaGpt"});
  impl_->source = std::move(source);
}
void* CudaGpt::stream() { return impl_->stream; }
uint64_t CudaGpt::working_buffer_bytes() const { return impl_->work_bytes; }

shard::DeviceOptimizer CudaGpt::device_optimizer() {
  Impl* s = impl_.get();
  shard::DeviceOptimizer d;
  d.sum_squares = [s](const float* x, size_t n, float* out, comm::GpuStream stream) {
    sum_squares(x, n, out, s->norm_partial, stream);
  };
  d.adamw = [](float* param, const float* grad, float* m, float* v, size_t n, const float* norm_sq,
               const shard::AdamWStep& a, comm::GpuStream stream) {
    const AdamWArgs args{a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.grad_scale, a.clip_norm, a.t};
    adamw(param, nullptr, grad, m, v, n, norm_sq, args, stream);
  };
  return d;
}

void CudaGpt::forward_backward(const int32_t* inputs, const int32_t* targets) {
  Impl& s = *impl_;
  s.upload_tokens(inputs, targets);
  s.run_micro_batch();
  ++s.micro;
}

float CudaGpt::forward_loss(const int32_t* inputs, const int32_t* targets) {
  Impl& s = *impl_;
  s.upload_tokens(inputs, targets);
  MICS_CUDA(cudaMemsetAsync(s.loss_sum, 0, 4, s.stream));
  s.forward(/*grad=*/false);
  MICS_CUDA(cudaMemcpyAsync(s.host_out, s.loss_sum, 4, cudaMemcpyDeviceToHost, s.stream));
  MICS_CUDA(cudaStreamSynchronize(s.stream));
  s.collect_profile();
  return s.host_out[0] / static_cast<float>(s.N);
}

float CudaGpt::accumulated_loss() {
  Impl& s = *impl_;
  MICS_CUDA(cudaMemcpyAsync(s.host_out, s.loss_sum, 4, cudaMemcpyDeviceToHost, s.stream));
  MICS_CUDA(cudaStreamSynchronize(s.stream));
  s.collect_profile();  // the sharded path's only synchronize per step
  return s.host_out[0] / static_cast<float>(s.N) / static_cast<float>(std::max(1, s.micro));
}

StepResult CudaGpt::step(const AdamWConfig& c, int64_t t, int micro_steps) {
  Impl& s = *impl_;
  if (!s.m)
    throw Error(ErrorKind::kInvalidArgument, "CudaGpt::step on a sharded model (no optimizer states of its own)",
                {.layer = "model", .where = "CudaGpt", .hint = "the sharded engine steps this model"});
  const float scale = 1.0f / static_cast<float>(std::max(1, micro_steps));
  s.clear_unwritten_grads();
  {
    Impl::Scope sc(&s, "grad norm");
    sum_squares(s.grads, s.nparams, s.norm_sq, s.norm_partial, s.stream);
  }
  {
    Impl::Scope sc(&s, "adamw");
    AdamWArgs a{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, scale, c.clip, t};
    adamw(s.params, s.params_bf16, s.grads, s.m, s.v, s.nparams, s.norm_sq, a, s.stream);
  }
  MICS_CUDA(cudaMemcpyAsync(s.host_out, s.loss_sum, 4, cudaMemcpyDeviceToHost, s.stream));
  MICS_CUDA(cudaMemcpyAsync(s.host_out + 1, s.norm_sq, 4, cudaMemcpyDeviceToHost, s.stream));
  MICS_CUDA(cudaStreamSynchronize(s.stream));
  s.collect_profile();
  StepResult r;
  r.loss = static_cast<double>(s.host_out[0]) / static_cast<double>(s.N) / std::max(1, micro_steps);
  r.grad_norm = std::sqrt(static_cast<double>(s.host_out[1])) * scale;
  r.skipped = !std::isfinite(s.host_out[1]);
  return r;
}

std::vector<PhaseTime> CudaGpt::take_profile() {
  std::vector<PhaseTime> out;
  for (auto& [name, p] : impl_->profile) out.push_back(p);
  impl_->profile.clear();
  return out;
}

uint64_t CudaGpt::allocated_bytes() const {
  return impl_->arena.size() + (64ull << 20) + (impl_->cudnn ? impl_->cudnn->device_bytes() : 0);
}

std::string CudaGpt::graph_status() const {
  const Impl& s = *impl_;
  if (!s.graphs) return s.graph_note.empty() ? "off" : s.graph_note;
  const int captured = (s.graph_exec[0] ? 1 : 0) + (s.graph_exec[1] ? 1 : 0);
  if (captured == 0) return "on (captured at each kind of micro-batch's second call; none yet)";
  return "on: " + std::to_string(captured) + " captured (a micro-batch's forward and backward per launch)";
}

std::string CudaGpt::attention_kind() const {
  if (impl_->cudnn) return impl_->cudnn->describe();
  std::string kind =
      impl_->flash ? "mics' fused flash-style kernels" : "cuBLASLt batched GEMMs + causal softmax kernels";
  if (!impl_->cudnn_fallback.empty()) kind += " (not cuDNN's SDPA: " + impl_->cudnn_fallback + ")";
  return kind;
}

}  // namespace mics::model::cuda
