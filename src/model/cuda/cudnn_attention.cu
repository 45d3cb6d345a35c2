// cuDNN fused SDPA through the backend API (see cudnn_attention.hpp for the contract).
#include "model/cuda/cudnn_attention.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "base/error.hpp"
#include "model/cuda/check.cuh"

#if defined(MICS_HAVE_CUDNN)
#include "base/cudnn_lib.hpp"
#endif

namespace mics::model::cuda {

namespace {

[[noreturn]] void throw_cudnn(const std::string& what) {
  throw Error(ErrorKind::kUnavailable, "cuDNN attention: " + what,
              {.layer = "model",
               .where = "cuDNN SDPA",
               .hint = "MICS_CUDA_CUDNN_ATTENTION=0 uses mics' own fused attention kernels instead; "
                       "CUDNN_LOGLEVEL_DBG=2 makes cuDNN say more"});
}

}  // namespace

#if !defined(MICS_HAVE_CUDNN)

struct CudnnAttention::Impl {};

std::string CudnnAttention::unavailable_reason() {
  return "built without cuDNN (cudnn_graph.h not found at configure time)";
}
CudnnAttention::CudnnAttention(int, int, int, const FlashLayout&, bool, bool) {
  throw_cudnn(unavailable_reason());
}
CudnnAttention::~CudnnAttention() = default;
void CudnnAttention::forward(const bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, float*, Stream) {}
void CudnnAttention::backward(const bf16_t*, const bf16_t*, const bf16_t*, const bf16_t*, const bf16_t*, const float*,
                              bf16_t*, bf16_t*, bf16_t*, Stream) {}
size_t CudnnAttention::device_bytes() const {
  return 0;
}
std::string CudnnAttention::describe() const {
  return "none";
}

#else

namespace {

void check(cudnnStatus_t status, const std::string& what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  char last[1024] = {0};
  cudnn_lib().GetLastErrorString(last, sizeof(last));
  throw_cudnn(what + " failed: " + cudnn_lib().GetErrorString(status) +
              (last[0] ? std::string(" (") + last + ")" : ""));
}

// One backend descriptor, destroyed with its owner.
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptorType_t type) {
    check(cudnn_lib().BackendCreateDescriptor(type, &d_), "cudnnBackendCreateDescriptor");
  }
  ~Desc() {
    if (d_) cudnn_lib().BackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const void* values) {
    check(cudnn_lib().BackendSetAttribute(d_, name, type, count, values),
          "cudnnBackendSetAttribute " + std::to_string(name));
    return *this;
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& other) {
    cudnnBackendDescriptor_t o = other.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &o);
  }
  Desc& finalize(const std::string& what) {
    check(cudnn_lib().BackendFinalize(d_), "finalizing " + what);
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

using Dims = std::vector<int64_t>;

// The uids of the tensors a caller binds (the rest are virtual, numbered from kFirstVirtual).
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kScale,
  kO,
  kStats,
  kDO,
  kDQ,
  kDK,
  kDV,
  kNegInf,
  kOne,
  kRowSum,
  kDQAccum,
  kFirstVirtual = 100
};

// An operation graph under construction: its tensors and operations, kept alive together.
struct GraphBuilder {
  // deques: the references handed out stay valid as descriptors are added.
  std::deque<Desc> tensors, ops, aux;
  int64_t next_virtual = kFirstVirtual;

  const Desc& tensor(int64_t uid, cudnnDataType_t type, const Dims& dims, const Dims& strides, bool is_virtual,
                     bool by_value = false) {
    Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t alignment = 16;
    t.set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
        .set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type)
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(dims.size()), dims.data())
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(strides.size()), strides.data())
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    if (is_virtual) t.set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    t.finalize("tensor " + std::to_string(uid));
    tensors.push_back(std::move(t));
    return tensors.back();
  }
  const Desc& virt(cudnnDataType_t type, const Dims& dims, const Dims& strides) {
    return tensor(next_virtual++, type, dims, strides, true);
  }
  const Desc& scalar(int64_t uid) { return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

  // y = mode(x[, b][, t]); GEN_INDEX takes an axis.
  void pointwise(cudnnPointwiseMode_t mode, const Desc& x, const Desc* b, const Desc* t, const Desc& y,
                 cudnnDataType_t precision = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &precision);
    if (axis >= 0) pw.set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    pw.finalize("pointwise descriptor");
    Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x)
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    if (b) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    if (t) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, *t);
    op.finalize("pointwise operation " + std::to_string(mode));
    aux.push_back(std::move(pw));
    ops.push_back(std::move(op));
  }
  void reduction(cudnnReduceTensorOp_t mode, const Desc& x, const Desc& y) {
    Desc r(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    r.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode)
        .set(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32)
        .finalize("reduction descriptor");
    Desc op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, r)
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x)
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y)
        .finalize("reduction operation");
    aux.push_back(std::move(r));
    ops.push_back(std::move(op));
  }
  void matmul(const Desc& a, const Desc& b, const Desc& c) {
    Desc m(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    m.set(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32).finalize("matmul descriptor");
    Desc op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, m)
        .finalize("matmul operation");
    aux.push_back(std::move(m));
    ops.push_back(std::move(op));
  }
  // S * scale, S = Q K^T (fp32 [B, H, T, T], dims and strides of the scores).
  const Desc& scaled_scores(const Desc& q, const Desc& kt, const Desc& scale, const Dims& dims, const Dims& strides) {
    const Desc& s = virt(CUDNN_DATA_FLOAT, dims, strides);
    matmul(q, kt, s);
    const Desc& scaled = virt(CUDNN_DATA_FLOAT, dims, strides);
    pointwise(CUDNN_POINTWISE_MUL, s, &scale, nullptr, scaled);
    return scaled;
  }
  // The causal mask: x where the key's index (axis 3) <= the query's (axis 2), else the
  // by-value kNegInf.
  const Desc& causal_mask(const Desc& x, const Dims& dims, const Dims& strides) {
    const Desc& row = virt(CUDNN_DATA_INT32, dims, strides);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, row, CUDNN_DATA_FLOAT, 2);
    const Desc& col = virt(CUDNN_DATA_INT32, dims, strides);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, col, CUDNN_DATA_FLOAT, 3);
    const Desc& keep = virt(CUDNN_DATA_BOOLEAN, dims, strides);
    pointwise(CUDNN_POINTWISE_CMP_GE, row, &col, nullptr, keep, CUDNN_DATA_BOOLEAN);
    const Desc& neg_inf = scalar(kNegInf);
    const Desc& masked = virt(CUDNN_DATA_FLOAT, dims, strides);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, &neg_inf, &keep, masked);
    return masked;
  }
  void reshape(const Desc& x, const Desc& y) {
    Desc op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x)
        .set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y)
        .finalize("reshape operation");
    ops.push_back(std::move(op));
  }
};

// A finalized execution plan and the workspace it asks for.
struct Plan {
  Desc plan;
  int64_t workspace = 0;
  int64_t engine = -1;
};

// The handle is created at the first plan, after the graph's operations are finalized (so a
// graph cuDNN rejects is reported as such even where no GPU is present).
Plan build_plan(cudnnHandle_t& handle, GraphBuilder& g, const std::string& what) {
  if (!handle) check(cudnn_lib().Create(&handle), "cudnnCreate");
  Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  std::vector<cudnnBackendDescriptor_t> ops;
  for (const Desc& op : g.ops) ops.push_back(op.get());
  graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops.size()), ops.data())
      .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
      .finalize(what + " operation graph");

  Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)
      .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode)
      .finalize(what + " engine heuristics");
  int64_t count = 0;
  check(cudnn_lib().BackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                        &count, nullptr),
        what + ": counting the heuristics' engine configs");
  if (count <= 0) throw_cudnn(what + ": cuDNN's heuristics offer no engine for this graph");
  std::vector<Desc> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw.push_back(configs.back().get());
  }
  check(cudnn_lib().BackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                        &count, raw.data()),
        what + ": reading the heuristics' engine configs");

  std::string tried;
  for (int64_t i = 0; i < count; ++i) {
    Plan p{Desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)};
    p.plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
        .set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, configs[static_cast<size_t>(i)]);
    const cudnnStatus_t st = cudnn_lib().BackendFinalize(p.plan.get());
    if (st != CUDNN_STATUS_SUCCESS) {
      tried += std::string(tried.empty() ? "" : ", ") + cudnn_lib().GetErrorString(st);
      continue;
    }
    int64_t n = 0;
    check(cudnn_lib().BackendGetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                          &n, &p.workspace),
          what + ": the plan's workspace size");
    Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
    cudnnBackendDescriptor_t e = engine.get();
    if (cudnn_lib().BackendGetAttribute(configs[static_cast<size_t>(i)].get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                                        CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &e) == CUDNN_STATUS_SUCCESS)
      cudnn_lib().BackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &p.engine);
    return p;
  }
  throw_cudnn(what + ": none of the " + std::to_string(count) + " engine configs builds (" + tried + ")");
}

}  // namespace

struct CudnnAttention::Impl {
  cudnnHandle_t handle = nullptr;
  Plan fwd, bwd;
  bool has_bwd = false;
  void* workspace = nullptr;
  float* row_sum = nullptr;    // [B, heads, T]: sum over d of dO * O (the backward's "D")
  float* dq_accum = nullptr;   // [B, heads, T, D] fp32: dQ's atomics (the non-deterministic backward)
  bool zero_dq_accum = false;  // cuDNN before 9.6 leaves zeroing it to the caller
  size_t workspace_bytes = 0, row_sum_bytes = 0, dq_accum_bytes = 0;
  // Scalars passed by value: their addresses go into every variant pack.
  float scale = 1, neg_inf = -std::numeric_limits<float>::infinity(), one = 1;

  ~Impl() {
    if (workspace) cudaFree(workspace);
    if (row_sum) cudaFree(row_sum);
    if (dq_accum) cudaFree(dq_accum);
    if (handle) cudnn_lib().Destroy(handle);
  }

  void execute(const Plan& p, const std::vector<int64_t>& uids, const std::vector<void*>& ptrs, Stream s,
               const char* what) {
    check(cudnn_lib().SetStream(handle, static_cast<cudaStream_t>(s)), "cudnnSetStream");
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    void* ws = workspace;
    pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()), uids.data())
        .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()), ptrs.data())
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws)
        .finalize(std::string(what) + " variant pack");
    check(cudnn_lib().BackendExecute(handle, p.plan.get(), pack.get()), what);
  }
};

std::string CudnnAttention::unavailable_reason() {
  return cudnn_lib().error;
}

CudnnAttention::CudnnAttention(int bh, int seq_len, int head_dim, const FlashLayout& layout, bool deterministic,
                               bool inference_only)
    : impl_(std::make_unique<Impl>()) {
  if (!cudnn_lib().error.empty()) throw_cudnn(cudnn_lib().error);
  const int64_t heads = layout.heads > 0 ? layout.heads : 1;
  if (bh <= 0 || seq_len <= 0 || bh % heads != 0)
    throw_cudnn("bad shape: " + std::to_string(bh) + " heads in all, " + std::to_string(heads) + " per sequence");
  if (head_dim % 8 != 0 || head_dim > 128)
    throw_cudnn("head size " + std::to_string(head_dim) + " is not supported (a multiple of 8, at most 128)");
  const int64_t B = bh / heads, H = heads, T = seq_len, D = head_dim;
  const int64_t ldq = layout.ld_qkv > 0 ? layout.ld_qkv : H * D, ldo = layout.ld_o > 0 ? layout.ld_o : H * D;
  Impl& m = *impl_;
  m.scale = 1.0f / std::sqrt(static_cast<float>(D));
  // cuDNN before 9.10 wants the lowest float rather than -inf as the masked score.
  if (cudnn_lib().GetVersion() < 91000) m.neg_inf = std::numeric_limits<float>::lowest();

  const cudnnDataType_t bf16 = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  const Dims rows{B, H, T, D}, cols{B, H, D, T};  // [.., T, D] and its transpose [.., D, T]
  const Dims qkv_rows{T * ldq, D, ldq, 1}, qkv_cols{T * ldq, D, 1, ldq}, o_rows{T * ldo, D, ldo, 1};
  const Dims scores{B, H, T, T}, scores_rm{H * T * T, T * T, T, 1}, scores_cm{H * T * T, T * T, 1, T};
  const Dims stat{B, H, T, 1}, stat_rm{H * T, T, 1, 1};

  {  // forward: S = Q K^T * scale, causal mask, softmax (stats = max + log sum), O = P V
    GraphBuilder g;
    const Desc& q = g.tensor(kQ, bf16, rows, qkv_rows, false);
    const Desc& kt = g.tensor(kK, bf16, cols, qkv_cols, false);
    const Desc& v = g.tensor(kV, bf16, rows, qkv_rows, false);
    const Desc& scale = g.scalar(kScale);
    const Desc& stats = g.tensor(kStats, f32, stat, stat_rm, false);
    const Desc& o = g.tensor(kO, bf16, rows, o_rows, false);
    const Desc& masked = g.causal_mask(g.scaled_scores(q, kt, scale, scores, scores_rm), scores, scores_rm);
    const Desc& mx = g.virt(f32, stat, stat_rm);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, masked, mx);
    const Desc& shifted = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_SUB, masked, &mx, nullptr, shifted);
    const Desc& e = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_EXP, shifted, nullptr, nullptr, e);
    const Desc& sum = g.virt(f32, stat, stat_rm);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
    const Desc& log_sum = g.virt(f32, stat, stat_rm);
    g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, nullptr, log_sum);
    g.pointwise(CUDNN_POINTWISE_ADD, mx, &log_sum, nullptr, stats);
    const Desc& p = g.virt(bf16, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_DIV, e, &sum, nullptr, p);
    g.matmul(p, v, o);
    m.fwd = build_plan(m.handle, g, "attention forward");
  }
  if (!inference_only) {
    // backward: Di = sum_d dO*O; P recomputed from the stats; dV = P^T dO; dP = dO V^T;
    // dS = P * (dP - Di) * scale; dK = dS^T Q; dQ = dS K (atomics into an fp32 buffer and a
    // conversion, or deterministic: straight into dQ, which cuDNN runs as a pass of its own).
    GraphBuilder g;
    const Desc& q = g.tensor(kQ, bf16, rows, qkv_rows, false);
    const Desc& kt = g.tensor(kK, bf16, cols, qkv_cols, false);
    const Desc& vt = g.tensor(kV, bf16, cols, qkv_cols, false);
    const Desc& scale = g.scalar(kScale);
    const Desc& o = g.tensor(kO, bf16, rows, o_rows, false);
    const Desc& stats = g.tensor(kStats, f32, stat, stat_rm, false);
    const Desc& dout = g.tensor(kDO, bf16, rows, o_rows, false);
    const Desc& dq = g.tensor(kDQ, bf16, rows, qkv_rows, false);
    const Desc& dk = g.tensor(kDK, bf16, rows, qkv_rows, false);
    const Desc& dv = g.tensor(kDV, bf16, rows, qkv_rows, false);
    const Desc& prod = g.virt(f32, rows, {H * T * D, T * D, H * D, 1});
    g.pointwise(CUDNN_POINTWISE_MUL, dout, &o, nullptr, prod);
    const Desc& prod_sum = g.virt(f32, stat, stat_rm);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, prod, prod_sum);
    const Desc& one = g.scalar(kOne);
    const Desc& row_sum = g.tensor(kRowSum, f32, stat, stat_rm, false);
    g.pointwise(CUDNN_POINTWISE_MUL, prod_sum, &one, nullptr, row_sum);
    const Desc& scaled = g.scaled_scores(q, kt, scale, scores, scores_rm);
    const Desc& shifted = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_SUB, scaled, &stats, nullptr, shifted);
    const Desc& masked = g.causal_mask(shifted, scores, scores_rm);
    const Desc& p = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_EXP, masked, nullptr, nullptr, p);
    const Desc& pt = g.virt(bf16, scores, scores_cm);
    g.reshape(p, pt);
    g.matmul(pt, dout, dv);
    const Desc& dp = g.virt(f32, scores, scores_rm);
    g.matmul(dout, vt, dp);
    const Desc& dp_shift = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_SUB, dp, &row_sum, nullptr, dp_shift);
    const Desc& ds_unscaled = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_MUL, dp_shift, &p, nullptr, ds_unscaled);
    const Desc& ds = g.virt(f32, scores, scores_rm);
    g.pointwise(CUDNN_POINTWISE_MUL, ds_unscaled, &scale, nullptr, ds);
    const Desc& dst = g.virt(bf16, scores, scores_cm);
    g.reshape(ds, dst);
    g.matmul(dst, q, dk);
    const Desc& k = g.virt(f32, rows, qkv_rows);
    g.reshape(kt, k);
    if (deterministic) {
      g.matmul(ds, k, dq);
    } else {
      const Desc& accum = g.tensor(kDQAccum, f32, rows, {H * T * D, T * D, D, 1}, false);
      g.matmul(ds, k, accum);
      g.pointwise(CUDNN_POINTWISE_IDENTITY, accum, nullptr, nullptr, dq);
      m.dq_accum_bytes = static_cast<size_t>(B * H * T * D) * sizeof(float);
      MICS_CUDA(cudaMalloc(&m.dq_accum, m.dq_accum_bytes));
      m.zero_dq_accum = cudnn_lib().GetVersion() < 90600;
    }
    m.bwd = build_plan(m.handle, g, "attention backward");
    m.has_bwd = true;
    m.row_sum_bytes = static_cast<size_t>(B * H * T) * sizeof(float);
    MICS_CUDA(cudaMalloc(&m.row_sum, m.row_sum_bytes));
  }
  m.workspace_bytes = static_cast<size_t>(std::max(m.fwd.workspace, m.has_bwd ? m.bwd.workspace : 0));
  if (m.workspace_bytes > 0) MICS_CUDA(cudaMalloc(&m.workspace, m.workspace_bytes));
}

CudnnAttention::~CudnnAttention() = default;

void CudnnAttention::forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* y, float* lse, Stream s) {
  Impl& m = *impl_;
  m.execute(m.fwd, {kQ, kK, kV, kScale, kNegInf, kO, kStats},
            {const_cast<bf16_t*>(q), const_cast<bf16_t*>(k), const_cast<bf16_t*>(v), &m.scale, &m.neg_inf, y, lse}, s,
            "cuDNN attention forward");
}

void CudnnAttention::backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* y, const bf16_t* dy,
                              const float* lse, bf16_t* dq, bf16_t* dk, bf16_t* dv, Stream s) {
  Impl& m = *impl_;
  if (!m.has_bwd) throw_cudnn("backward called on an inference-only attention");
  std::vector<int64_t> uids{kQ, kK, kV, kScale, kNegInf, kOne, kO, kStats, kDO, kDQ, kDK, kDV, kRowSum};
  std::vector<void*> ptrs{const_cast<bf16_t*>(q),
                          const_cast<bf16_t*>(k),
                          const_cast<bf16_t*>(v),
                          &m.scale,
                          &m.neg_inf,
                          &m.one,
                          const_cast<bf16_t*>(y),
                          const_cast<float*>(lse),
                          const_cast<bf16_t*>(dy),
                          dq,
                          dk,
                          dv,
                          m.row_sum};
  if (m.dq_accum) {
    uids.push_back(kDQAccum);
    ptrs.push_back(m.dq_accum);
    if (m.zero_dq_accum) MICS_CUDA(cudaMemsetAsync(m.dq_accum, 0, m.dq_accum_bytes, static_cast<cudaStream_t>(s)));
  }
  m.execute(m.bwd, uids, ptrs, s, "cuDNN attention backward");
}

size_t CudnnAttention::device_bytes() const {
  return impl_->workspace_bytes + impl_->row_sum_bytes + impl_->dq_accum_bytes;
}

std::string CudnnAttention::describe() const {
  const size_t v = cudnn_lib().GetVersion();
  std::string s = "cuDNN " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                  std::to_string(v % 100) + " fused SDPA (engine " + std::to_string(impl_->fwd.engine);
  if (impl_->has_bwd)
    s += " / " + std::to_string(impl_->bwd.engine) + (impl_->dq_accum ? ", dQ by atomics" : ", deterministic dQ");
  return s + ")";
}

#endif  // MICS_HAVE_CUDNN

}  // namespace mics::model::cuda
