#pragma once
// Tensor-parallel GPT slices (Megatron style) for the mesh trainer (train/mesh_trainer.cpp).
//
// t tensor ranks each hold a slice of every block and of the vocabulary; rank k of t:
//   attention  qkv_w/qkv_b: column-split by heads (heads k*H/t .. (k+1)*H/t - 1 of q, k and v),
//              attention runs locally on those heads; proj_w row-split (its input columns of
//              those heads), the partial outputs all-reduced over t, then + proj_b
//   MLP        fc_w/fc_b column-split (hidden units k*4C/t ..), GELU local; fcproj_w row-split,
//              partial outputs all-reduced, then + fcproj_b
//   backward   the conjugate all-reduces: the gradient at each LayerNorm output (ln1 and ln2,
//              the input of a column-split GEMM) is all-reduced over t (Megatron's f operator:
//              identity forward, all-reduce backward; g, after the row-split GEMMs, is its
//              conjugate: all-reduce forward, identity backward)
//   embedding  vocab-parallel: wte rows k*V/t .. (k+1)*V/t - 1; a token outside the slice
//              embeds as zeros, the outputs are all-reduced over t, then + wpe
//   head       logits of the local vocabulary (the head tied to the local wte rows);
//              vocab-parallel cross-entropy: the row max (a max all-reduce of N floats) and
//              the sum of exponentials with the target's logit (one sum all-reduce of 2N
//              floats); backward all-reduces the gradient at lnf's output (N*C)
// LayerNorms, wpe, proj_b and fcproj_b are replicated over t. Their inputs and output
// gradients are identical on every tensor rank (the all-reduces above make them so, bit for
// bit: every rank combines the same values in the same order), so their gradients come out
// identical without an all-reduce: "kept consistent". The trainer counts them 1/t times in
// the global gradient norm.
//
// Units of a slice: a block is two units, "split" (qkv_w [3C/t, C], qkv_b [3C/t],
// proj_w [C, C/t], fc_w [4C/t, C], fc_b [4C/t], fcproj_w [C, 4C/t]) and "rep" (ln1_w, ln1_b,
// proj_b, ln2_w, ln2_b, fcproj_b: 6C); embeddings are "wte" [V/t, C], "wpe" [T, C] and "lnf"
// [2C] (lnf_w, lnf_b). t must divide H and V (topo/mesh.hpp checks); no padding.
//
// All-reduces per micro-batch and tensor rank (A(x) = one all-reduce of x floats over t):
//   each block: forward 2 A(N*C), backward 2 A(N*C)
//   embedding (first stage): forward A(N*C)
//   head (last stage): forward A_max(N) + A(2N), backward A(N*C)
// with N = B*T rows. Nothing is all-reduced when t = 1.
//
// Sequence parallelism (TpOptions::sequence_parallel, Korthikanti et al. 2022, Megatron-LM):
// between the GEMM pairs (the LayerNorms, the residual adds, the pipeline messages) every
// rank holds only its part of the sequence: rank k the positions k*T/t .. (k+1)*T/t - 1 of
// every one of the B sequences, Nl = N/t rows ("local rows", in (b, position) order). The
// operators become: g (after the row-split GEMMs) a reduce-scatter along the sequence in the
// forward and an all-gather of the gradient in the backward; f (before the column-split
// GEMMs) an all-gather in the forward and a reduce-scatter of the gradient in the backward.
// The GEMMs and attention see all N rows as before. The gathered LayerNorm outputs are not
// kept: the backward gathers them again for the weight gradients (the paper's choice: one
// more all-gather instead of N*C floats per GEMM input), so a block keeps x, ln1, res2 and
// ln2 (and their row statistics) for Nl rows instead of N. Gathered rows come in rank-major
// order (rank k's Nl rows, then rank k+1's); the MLP is row-wise and runs on them as they
// are, attention and the head reorder them to (b, position) and back (a copy of N*C floats).
// The LayerNorm weights and the row-parallel biases now see only a rank's rows, so their
// gradients (the block's "rep" unit, lnf) are summed over t (one all-reduce each); wpe's
// gradient comes from the all-gathered embedding gradient, identical on every rank. T must
// be divisible by t (topo::check_sequence_parallel says which t are valid).
// Collectives per micro-batch and tensor rank with sequence parallelism (G(x) an all-gather
// and R(x) a reduce-scatter of an x-float array, each rank holding x/t of it):
//   each block: forward 2 G(N*C) + 2 R(N*C), backward 4 G(N*C) + 2 R(N*C) + A(6C)
//   embedding (first stage): forward R(N*C), backward G(N*C)
//   head (last stage): forward G(N*C) + A_max(N) + A(2N), backward G(N*C) + R(N*C) + A(2C)
// With ring algorithms G(x) and R(x) each send half of what A(x) sends, so a block's 6 G + 4 R
// move 1.25x the bytes of its 4 A (the backward's re-gathers); below the runtime's latency
// threshold a reduce-scatter runs as a recursive-doubling all-reduce (comm/traffic_model.hpp)
// and the ratio grows (1.76x measured at t = 2, docs/PERFORMANCE.md). The pipeline messages
// shrink to N/t rows.
//
// Recompute (TpOptions::recompute): a block keeps only its input; the backward reruns the
// block's forward (its collectives included, so they are counted twice: a block's forward
// collectives come once more per micro-batch) into one shared set of activations, then runs
// its backward. The rerun computes the same bits, so the gradients are bit-identical.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "base/dtype.hpp"
#include "model/gpt.hpp"

namespace mics::model {

// In place over the tensor group: data[0..count) = op over the t ranks.
using TensorAllReduce = std::function<void(float* data, size_t count, ReduceOp op)>;
// Over the tensor group, `count` the full array's floats (count/t per rank, rank k's part at
// k*count/t): all_gather fills full[0..count) from every rank's part; reduce_scatter sums the
// t ranks' full arrays and leaves rank k's part of the sum in part[0..count/t).
using TensorAllGather = std::function<void(const float* part, float* full, size_t count)>;
using TensorReduceScatter = std::function<void(const float* full, float* part, size_t count)>;

struct TensorOps {
  TensorAllReduce all_reduce;
  TensorAllGather all_gather;          // needed with sequence parallelism only
  TensorReduceScatter reduce_scatter;  // needed with sequence parallelism only
};

struct TpOptions {
  bool sequence_parallel = false;  // needs slice.size > 1 and T % slice.size == 0
  bool recompute = false;
};

struct TpSlice {
  int rank = 0, size = 1;
};

// Views of a slice's units (the layouts above), over fp32 parameters or gradients, or their
// bf16 copy on a GPU: C channels, cl = C/t.
template <typename F>
struct TpSplitView {
  F *qkv_w, *qkv_b, *proj_w, *fc_w, *fc_b, *fcproj_w;
};
template <typename F>
TpSplitView<F> tp_split_view(F* p, size_t c, size_t cl) {
  TpSplitView<F> s;
  s.qkv_w = p;
  s.qkv_b = s.qkv_w + 3 * cl * c;
  s.proj_w = s.qkv_b + 3 * cl;
  s.fc_w = s.proj_w + c * cl;
  s.fc_b = s.fc_w + 4 * cl * c;
  s.fcproj_w = s.fc_b + 4 * cl;
  return s;
}
template <typename F>
struct TpRepView {
  F *ln1_w, *ln1_b, *proj_b, *ln2_w, *ln2_b, *fcproj_b;
};
template <typename F>
TpRepView<F> tp_rep_view(F* p, size_t c) {
  return {p, p + c, p + 2 * c, p + 3 * c, p + 4 * c, p + 5 * c};
}

size_t tp_split_numel(const GptConfig& c, int t);
size_t tp_rep_numel(const GptConfig& c);
size_t tp_wte_numel(const GptConfig& c, int t);
size_t tp_wpe_numel(const GptConfig& c);
size_t tp_lnf_numel(const GptConfig& c);

// Cut rank `slice.rank`'s pieces out of a full unit (gpt.hpp layouts, as Gpt::init_unit fills
// them), so a mesh starts from exactly the single-process model.
void tp_slice_block(const GptConfig& c, TpSlice slice, const float* full_block, float* split, float* rep);
void tp_slice_embed(const GptConfig& c, TpSlice slice, const float* full_unit0, float* wte, float* wpe, float* lnf);

// Where a slice's unit lives in the single-process model (gpt.hpp's units: 0 the embeddings,
// 1 + l block l), so checkpoints store every tensor in that logical layout whatever the mesh
// (train/checkpoint.hpp). A piece: the slice unit's elements [local, local + rows*run) are
// `rows` rows of `run` elements, row i at element offset + i*stride of unit `unit`; contiguous
// pieces have rows = 1 and stride = run. The pieces of a unit cover it exactly once, and the
// pieces of all t slices (the replicated ones once per slice) cover the logical unit; adjacent
// contiguous pieces are merged. Column slices of row-major matrices (proj_w, fcproj_w) are
// the strided pieces: C rows of C/t (4C/t) elements.
struct UnitPiece {
  size_t local = 0;
  int unit = 0;
  size_t offset = 0, rows = 1, run = 0, stride = 0;
};
enum class TpUnit { kWte, kWpe, kLnf, kSplit, kRep };
std::vector<UnitPiece> tp_unit_pieces(const GptConfig& c, TpSlice slice, TpUnit kind, int layer = 0);

// What a TpPass of these dimensions keeps for the backward (its activation_bytes() once its
// forward ran), without building one: for the planner (plan/mesh_plan.cpp). with_head: the
// stage is the last (lnf, the logits of the vocabulary slice and their log-sum-exp).
uint64_t tp_activation_bytes(const GptConfig& c, int t, int batch, int seq_len, int blocks, bool sequence_parallel,
                             bool recompute, bool with_head);

// One micro-batch's activations on one pipeline stage: `blocks` consecutive blocks, with the
// embedding (first stage) and the head (last stage) as the stage has them. The mesh trainer
// (train/mesh_trainer.cpp) drives a stage through this interface; TpPass computes on the CPU,
// model/cuda/gpt_tp_cuda.hpp on a GPU. Every pointer here is host memory: the parameters the
// data engine gathered, the gradients it reduce-scatters, the pipeline messages.
class StagePass {
 public:
  virtual ~StagePass() = default;

  virtual void set_tokens(const int32_t* inputs, const int32_t* targets) = 0;  // B*T each; copied
  virtual size_t rows() const = 0;  // N = B*T
  // Rows of input(), output() and grad(): N, or N/t with sequence parallelism (this rank's
  // positions of every sequence).
  virtual size_t local_rows() const = 0;
  virtual float* input() = 0;              // [local rows, C]: the stage's input (received, or embed_forward's)
  virtual const float* output() const = 0; // [local rows, C]: the last block's output (what is sent on)
  virtual float* grad() = 0;               // [local rows, C]: dL/d(output) before backward, dL/d(input) after
  // Bytes of the activations kept for the backward (per micro-batch), and the part of them in
  // the LayerNorm regions (every block's input, ln1, res2, ln2 and their row statistics, the
  // stage's output, the head's lnf): the part sequence parallelism divides by t.
  virtual uint64_t activation_bytes() const = 0;
  virtual uint64_t layernorm_region_bytes() const = 0;

  virtual void embed_forward(const float* wte, const float* wpe) = 0;  // into input()
  virtual void block_forward(int i, const float* split, const float* rep) = 0;  // local block i
  virtual float head_forward(const float* wte, const float* lnf) = 0;  // the mean loss; reads output()
  // [N, V/t]: the logits of this rank's vocabulary slice (columns slice.rank*V/t ..) from the
  // last head_forward (the samples gather rows of them over the tensor group).
  virtual const float* logits() const = 0;
  // Backward: head_backward overwrites dwte, dlnf and grad(); block_backward overwrites the
  // block's gradients and turns grad() into dL/d(its input); embed_backward accumulates into
  // dwte and overwrites dwpe from grad(). The replicated gradients (drep, dlnf, dwpe) come out
  // identical on every tensor rank, with or without sequence parallelism.
  virtual void head_backward(const float* wte, const float* lnf, float* dwte, float* dlnf) = 0;
  virtual void block_backward(int i, const float* split, const float* rep, float* dsplit, float* drep) = 0;
  virtual void embed_backward(float* dwte, float* dwpe) = 0;
};

// The CPU stage (fp32).
class TpPass final : public StagePass {
 public:
  TpPass(const GptConfig& c, TpSlice slice, int batch, int seq_len, int blocks, TensorOps ops, TpOptions options = {});
  ~TpPass() override;
  TpPass(const TpPass&) = delete;
  TpPass& operator=(const TpPass&) = delete;

  void set_tokens(const int32_t* inputs, const int32_t* targets) override;
  size_t rows() const override;
  size_t local_rows() const override;
  float* input() override;
  const float* output() const override;
  float* grad() override;
  uint64_t activation_bytes() const override;
  uint64_t layernorm_region_bytes() const override;
  void embed_forward(const float* wte, const float* wpe) override;
  void block_forward(int i, const float* split, const float* rep) override;
  float head_forward(const float* wte, const float* lnf) override;
  const float* logits() const override;
  void head_backward(const float* wte, const float* lnf, float* dwte, float* dlnf) override;
  void block_backward(int i, const float* split, const float* rep, float* dsplit, float* drep) override;
  void embed_backward(float* dwte, float* dwpe) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mics::model
