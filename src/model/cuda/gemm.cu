// cuBLASLt GEMMs (gemm.hpp). A plan (descriptors and an algorithm) is made once per shape and
// epilogue and cached; pointers are set per call. The algorithm: the heuristic's first, or with
// autotuning (set_autotune) the fastest of the heuristic's first candidates, timed once on the
// first call's own operands (its output written to a scratch copy, so the call's result and any
// accumulation into C are untouched).
#include "model/cuda/gemm.hpp"

#include <cuda_bf16.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>

#include "model/cuda/check.cuh"

namespace mics::model::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr size_t kWorkspaceBytes = 64ull << 20;

cudaStream_t st(Stream s) { return static_cast<cudaStream_t>(s); }

__global__ void add_bias_bf16(bf16* out, const bf16* bias, int rows, int oc, int ld) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(rows) * oc) return;
  const int r = static_cast<int>(i / oc), c = static_cast<int>(i % oc);
  bf16* p = out + static_cast<size_t>(r) * ld + c;
  *p = __float2bfloat16(__bfloat162float(*p) + __bfloat162float(bias[c]));
}

__global__ void add_bias_f32(float* out, const float* bias, int rows, int oc) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(rows) * oc) return;
  out[i] += bias[i % oc];
}

unsigned blocks(size_t n) { return static_cast<unsigned>((n + 255) / 256); }

enum class Epi { kNone, kBias, kGeluAuxBias, kDGelu };

struct Spec {
  bool ta, tb;
  int m, n, k, lda, ldb, ldd;
  bool d_f32;
  bool beta;       // beta = 1 (C read)
  bool c_separate; // C is another matrix than D (same layout)
  int batch;
  long long sa, sb, sd;
  Epi epi;
  auto key() const {
    return std::make_tuple(ta, tb, m, n, k, lda, ldb, ldd, d_f32, beta, c_separate, batch, sa, sb, sd,
                           static_cast<int>(epi));
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  static constexpr int kMaxCandidates = 16;
  cublasLtMatmulAlgo_t candidates[kMaxCandidates];  // the heuristic's, best first (autotuning)
  int num_candidates = 0;
  bool ok = false;
  bool tuned = false;
};

}  // namespace

struct Blas::Impl {
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  std::map<decltype(Spec{}.key()), Plan> plans;
  int tune_candidates = 0;  // > 1: time that many of the heuristic's algorithms per plan

  Impl() {
    MICS_CUBLAS(cublasLtCreate(&lt));
    MICS_CUDA(cudaMalloc(&workspace, kWorkspaceBytes));
  }
  ~Impl() {
    for (auto& [key, p] : plans) {
      if (p.desc) cublasLtMatmulDescDestroy(p.desc);
      if (p.a) cublasLtMatrixLayoutDestroy(p.a);
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.d) cublasLtMatrixLayoutDestroy(p.d);
    }
    cudaFree(workspace);
    cublasLtDestroy(lt);
  }

  Plan& plan(const Spec& sp) {
    auto it = plans.find(sp.key());
    if (it != plans.end()) return it->second;
    Plan& p = plans[sp.key()];
    MICS_CUBLAS(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = sp.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = sp.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    if (sp.epi == Epi::kBias) epi = CUBLASLT_EPILOGUE_BIAS;
    if (sp.epi == Epi::kGeluAuxBias) epi = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    if (sp.epi == Epi::kDGelu) epi = CUBLASLT_EPILOGUE_DGELU;
    MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    if (sp.epi == Epi::kGeluAuxBias || sp.epi == Epi::kDGelu) {
      const int64_t ld = sp.ldd;
      MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
    }
    MICS_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, sp.ta ? sp.k : sp.m, sp.ta ? sp.m : sp.k, sp.lda));
    MICS_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, sp.tb ? sp.n : sp.k, sp.tb ? sp.k : sp.n, sp.ldb));
    MICS_CUBLAS(cublasLtMatrixLayoutCreate(&p.d, sp.d_f32 ? CUDA_R_32F : CUDA_R_16BF, sp.m, sp.n, sp.ldd));
    if (sp.batch > 1) {
      const int32_t count = sp.batch;
      for (auto [layout, stride] : {std::pair{p.a, sp.sa}, std::pair{p.b, sp.sb}, std::pair{p.d, sp.sd}}) {
        const int64_t s64 = stride;
        MICS_CUBLAS(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
        MICS_CUBLAS(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &s64,
                                                     sizeof(s64)));
      }
    }
    cublasLtMatmulPreference_t pref = nullptr;
    MICS_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    MICS_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t results[Plan::kMaxCandidates] = {};
    const int wanted = std::clamp(tune_candidates, 1, Plan::kMaxCandidates);
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.d, p.d, pref, wanted, results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p.ok = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p.ok) p.algo = results[0].algo;
    for (int i = 0; p.ok && i < found; ++i)
      if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates[p.num_candidates++] = results[i].algo;
    p.tuned = p.num_candidates < 2;
    return p;
  }

  // Times every candidate on this call's operands with D (and a written GELU aux) redirected to
  // scratch, keeps the fastest. A failed scratch allocation keeps the heuristic's first.
  void tune(Plan& p, const Spec& sp, const void* A, const void* B, const void* C, const void* D, float alpha,
            const void* bias, void* aux, Stream s) {
    p.tuned = true;
    const size_t elt = sp.d_f32 ? 4 : 2;
    const size_t span = static_cast<size_t>(sp.ldd) * static_cast<size_t>(sp.n) +
                        (sp.batch > 1 ? static_cast<size_t>(sp.sd) * static_cast<size_t>(sp.batch - 1) : 0);
    const bool aux_written = sp.epi == Epi::kGeluAuxBias;
    void* scratch = nullptr;
    void* scratch_aux = nullptr;
    if (cudaMalloc(&scratch, span * elt) != cudaSuccess ||
        (aux_written && cudaMalloc(&scratch_aux, span * 2) != cudaSuccess)) {
      (void)cudaGetLastError();  // out of memory here is not an error: keep the heuristic's choice
      if (scratch) cudaFree(scratch);
      return;
    }
    if (aux)
      MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                 aux_written ? &scratch_aux : &aux, sizeof(void*)));
    if (bias)
      MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float beta = sp.beta ? 1.0f : 0.0f;
    const void* c_in = C ? C : D;  // read, never written: the output goes to scratch
    cudaEvent_t begin = nullptr, end = nullptr;
    MICS_CUDA(cudaEventCreate(&begin));
    MICS_CUDA(cudaEventCreate(&end));
    float best_ms = 0;
    for (int i = 0; i < p.num_candidates; ++i) {
      const cublasLtMatmulAlgo_t* algo = &p.candidates[i];
      // warm-up; an algorithm that cannot run is skipped
      if (cublasLtMatmul(lt, p.desc, &alpha, A, p.a, B, p.b, &beta, c_in, p.d, scratch, p.d, algo, workspace,
                         kWorkspaceBytes, st(s)) != CUBLAS_STATUS_SUCCESS)
        continue;
      constexpr int kReps = 3;
      MICS_CUDA(cudaEventRecord(begin, st(s)));
      for (int r = 0; r < kReps; ++r)
        (void)cublasLtMatmul(lt, p.desc, &alpha, A, p.a, B, p.b, &beta, c_in, p.d, scratch, p.d, algo, workspace,
                             kWorkspaceBytes, st(s));
      MICS_CUDA(cudaEventRecord(end, st(s)));
      MICS_CUDA(cudaEventSynchronize(end));
      float ms = 0;
      MICS_CUDA(cudaEventElapsedTime(&ms, begin, end));
      if (best_ms == 0 || ms < best_ms) {
        best_ms = ms;
        p.algo = *algo;
      }
    }
    cudaEventDestroy(begin);
    cudaEventDestroy(end);
    MICS_CUDA(cudaStreamSynchronize(st(s)));
    cudaFree(scratch);
    if (scratch_aux) cudaFree(scratch_aux);
  }

  // Returns false when cuBLASLt has no algorithm (only asked with an epilogue: the caller
  // falls back); throws for a plain GEMM.
  bool run(const Spec& sp, const void* A, const void* B, const void* C, void* D, float alpha, const void* bias,
           void* aux, Stream s) {
    Plan& p = plan(sp);
    if (p.ok && !p.tuned) tune(p, sp, A, B, C, D, alpha, bias, aux, s);
    if (!p.ok) {
      if (sp.epi != Epi::kNone) return false;
      throw_cuda("cublasLtMatmulAlgoGetHeuristic",
                 "no algorithm for a " + std::to_string(sp.m) + "x" + std::to_string(sp.n) + "x" +
                     std::to_string(sp.k) + " bf16 GEMM");
    }
    if (bias)
      MICS_CUBLAS(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    if (aux)
      MICS_CUBLAS(
          cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    const float beta = sp.beta ? 1.0f : 0.0f;
    MICS_CUBLAS(cublasLtMatmul(lt, p.desc, &alpha, A, p.a, B, p.b, &beta, C ? C : D, p.d, D, p.d, &p.algo,
                               workspace, kWorkspaceBytes, st(s)));
    return true;
  }
};

Blas::Blas() : impl_(std::make_unique<Impl>()) {}
Blas::~Blas() = default;
void Blas::set_autotune(int candidates) { impl_->tune_candidates = candidates; }

namespace {
Spec forward_spec(int rows, int ic, int oc, int ld_out, bool f32, bool beta, bool c_separate, Epi epi) {
  return Spec{true, false, oc, rows, ic, ic, ic, ld_out, f32, beta, c_separate, 1, 0, 0, 0, epi};
}
}  // namespace

void Blas::linear(const bf16_t* in, const bf16_t* w, const bf16_t* bias, bf16_t* out, int rows, int ic, int oc,
                  Stream s) {
  if (bias && fused_ &&
      impl_->run(forward_spec(rows, ic, oc, oc, false, false, false, Epi::kBias), w, in, nullptr, out, 1.0f, bias,
                 nullptr, s))
    return;
  impl_->run(forward_spec(rows, ic, oc, oc, false, false, false, Epi::kNone), w, in, nullptr, out, 1.0f, nullptr,
             nullptr, s);
  if (bias) {
    add_bias_bf16<<<blocks(static_cast<size_t>(rows) * oc), 256, 0, st(s)>>>(
        reinterpret_cast<bf16*>(out), reinterpret_cast<const bf16*>(bias), rows, oc, oc);
    MICS_LAUNCHED(add_bias_bf16);
  }
}

void Blas::linear_ld(const bf16_t* in, const bf16_t* w, bf16_t* out, int ld_out, int rows, int ic, int oc,
                     Stream s) {
  impl_->run(forward_spec(rows, ic, oc, ld_out, false, false, false, Epi::kNone), w, in, nullptr, out, 1.0f,
             nullptr, nullptr, s);
}

void Blas::linear_f32(const bf16_t* in, const bf16_t* w, float* out, int rows, int ic, int oc, Stream s) {
  impl_->run(forward_spec(rows, ic, oc, oc, true, false, false, Epi::kNone), w, in, nullptr, out, 1.0f, nullptr,
             nullptr, s);
}

void Blas::linear_gelu(const bf16_t* in, const bf16_t* w, const bf16_t* bias, bf16_t* pre, bf16_t* out, int rows,
                       int ic, int oc, Stream s) {
  if (fused_ && impl_->run(forward_spec(rows, ic, oc, oc, false, false, false, Epi::kGeluAuxBias), w, in, nullptr,
                           out, 1.0f, bias, pre, s))
    return;
  linear(in, w, bias, pre, rows, ic, oc, s);
  gelu_forward(pre, out, static_cast<size_t>(rows) * oc, s);
}

void Blas::linear_residual(const bf16_t* in, const bf16_t* w, const float* bias, const float* residual, float* out,
                           int rows, int ic, int oc, Stream s) {
  const bool separate = residual != out;
  if (fused_ && impl_->run(forward_spec(rows, ic, oc, oc, true, true, separate, Epi::kBias), w, in, residual, out,
                           1.0f, bias, nullptr, s))
    return;
  impl_->run(forward_spec(rows, ic, oc, oc, true, true, separate, Epi::kNone), w, in, residual, out, 1.0f, nullptr,
             nullptr, s);
  add_bias_f32<<<blocks(static_cast<size_t>(rows) * oc), 256, 0, st(s)>>>(out, bias, rows, oc);
  MICS_LAUNCHED(add_bias_f32);
}

void Blas::linear_residual(const bf16_t* in, const bf16_t* w, const bf16_t* bias, const bf16_t* residual,
                           bf16_t* out, int rows, int ic, int oc, Stream s) {
  const bool separate = residual != out;
  if (fused_ && impl_->run(forward_spec(rows, ic, oc, oc, false, true, separate, Epi::kBias), w, in, residual, out,
                           1.0f, bias, nullptr, s))
    return;
  impl_->run(forward_spec(rows, ic, oc, oc, false, true, separate, Epi::kNone), w, in, residual, out, 1.0f, nullptr,
             nullptr, s);
  add_bias_bf16<<<blocks(static_cast<size_t>(rows) * oc), 256, 0, st(s)>>>(
      reinterpret_cast<bf16*>(out), reinterpret_cast<const bf16*>(bias), rows, oc, oc);
  MICS_LAUNCHED(add_bias_bf16);
}

void Blas::linear_backward_input(const bf16_t* dout, int ld_dout, const bf16_t* w, const bf16_t* gelu_pre,
                                 bf16_t* din, int rows, int ic, int oc, Stream s) {
  // din^T (ic x rows) = w^T-as-stored (ic x oc) . dout^T (oc x rows), column-major.
  const Spec plain{false, false, ic, rows, oc, ic, ld_dout, ic, false, false, false, 1, 0, 0, 0, Epi::kNone};
  if (gelu_pre) {
    Spec fused = plain;
    fused.epi = Epi::kDGelu;
    if (fused_ && impl_->run(fused, w, dout, nullptr, din, 1.0f, nullptr, const_cast<bf16_t*>(gelu_pre), s)) return;
  }
  impl_->run(plain, w, dout, nullptr, din, 1.0f, nullptr, nullptr, s);
  if (gelu_pre) gelu_backward(gelu_pre, din, din, static_cast<size_t>(rows) * ic, s);
}

void Blas::linear_backward_weight(const bf16_t* dout, int ld_dout, const bf16_t* in, float* dw, int rows, int ic,
                                  int oc, Stream s, bool accumulate) {
  // dw^T (ic x oc) (+)= in^T (ic x rows) . dout (rows x oc), column-major.
  const Spec sp{false, true, ic, oc, rows, ic, ld_dout, ic, true, accumulate, false, 1, 0, 0, 0, Epi::kNone};
  impl_->run(sp, in, dout, nullptr, dw, 1.0f, nullptr, nullptr, s);
}

void Blas::batched(const Batched& g, Stream s) {
  const Spec sp{g.ta, g.tb, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, false, false, false, g.batch, g.stride_a,
                g.stride_b, g.stride_d, Epi::kNone};
  impl_->run(sp, g.a, g.b, nullptr, g.d, g.alpha, nullptr, nullptr, s);
}

}  // namespace mics::model::cuda
