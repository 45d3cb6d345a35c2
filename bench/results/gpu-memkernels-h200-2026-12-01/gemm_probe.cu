// Experiment (not committed): every GEMM shape of GPT-2 124M B16 T1024, in mics' configuration
// and in alternatives (llm.c's bf16 outputs, no C, ...), each timed over up to 32 of cuBLASLt's
// heuristic candidates. Prints the heuristic's first, the best and its config.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CK(x)                                                                             \
  do {                                                                                    \
    auto e = (x);                                                                         \
    if ((int)e != 0) {                                                                    \
      printf("error %d at %s:%d %s\n", (int)e, __FILE__, __LINE__, #x);                   \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

enum Epi { NONE, BIAS, GELU_AUX_BIAS, DGELU };
struct Case {
  std::string name;
  bool ta, tb;
  int m, n, k;
  bool d_f32, beta, c_sep;
  Epi epi;
};

__global__ void fill(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f) * 0.1f);
  }
}
static cublasLtHandle_t lt;
static void* ws;
static const size_t kWs = 64ull << 20;

int main(int argc, char** argv) {
  const int N = 16384, C = 768;
  CK(cublasLtCreate(&lt));
  CK(cudaMalloc(&ws, kWs));
  const size_t big = (size_t)N * 4 * C * 4 + (size_t)4 * C * 4 * C * 4;  // generous
  void *A, *B, *Cm, *D, *aux, *bias;
  CK(cudaMalloc(&A, big));
  CK(cudaMalloc(&B, big));
  CK(cudaMalloc(&Cm, big));
  CK(cudaMalloc(&D, big));
  CK(cudaMalloc(&aux, big));
  CK(cudaMalloc(&bias, 1 << 20));
  fill<<<1024, 256>>>((__nv_bfloat16*)A, big / 2, 1);
  fill<<<1024, 256>>>((__nv_bfloat16*)B, big / 2, 2);
  fill<<<1024, 256>>>((__nv_bfloat16*)Cm, big / 2, 3);
  fill<<<1024, 256>>>((__nv_bfloat16*)D, big / 2, 4);
  fill<<<1024, 256>>>((__nv_bfloat16*)aux, big / 2, 5);
  fill<<<64, 256>>>((__nv_bfloat16*)bias, (1 << 20) / 2, 6);
  CK(cudaDeviceSynchronize());
  std::vector<Case> cases;
  struct Lin { const char* name; int ic, oc; };
  Lin lins[] = {{"qkv", C, 3 * C}, {"proj", C, C}, {"fc", C, 4 * C}, {"fcproj", 4 * C, C}};
  for (auto& l : lins) {
    std::string nm = l.name;
    // forward: D [oc, N] = W^T(as stored [oc, ic] row-major = [ic, oc] col-major) . in
    if (nm == "qkv") cases.push_back({nm + " fwd bf16+bias (mics=llm.c)", true, false, l.oc, N, l.ic, false, false, false, BIAS});
    if (nm == "proj" || nm == "fcproj") {
      cases.push_back({nm + " fwd f32+C+bias (mics)", true, false, l.oc, N, l.ic, true, true, true, BIAS});
      cases.push_back({nm + " fwd f32+C in place+bias", true, false, l.oc, N, l.ic, true, true, false, BIAS});
      cases.push_back({nm + " fwd f32 no C +bias", true, false, l.oc, N, l.ic, true, false, false, BIAS});
      cases.push_back({nm + " fwd f32+C no bias", true, false, l.oc, N, l.ic, true, true, true, NONE});
      cases.push_back({nm + " fwd bf16+bias (llm.c)", true, false, l.oc, N, l.ic, false, false, false, BIAS});
      cases.push_back({nm + " fwd bf16 plain", true, false, l.oc, N, l.ic, false, false, false, NONE});
    }
    if (nm == "fc") {
      cases.push_back({nm + " fwd GELU_AUX_BIAS (mics)", true, false, l.oc, N, l.ic, false, false, false, GELU_AUX_BIAS});
      cases.push_back({nm + " fwd bf16+bias (llm.c)", true, false, l.oc, N, l.ic, false, false, false, BIAS});
    }
    // backward input: din [ic, N] = W (ic x oc col-major) . dout [oc, N]
    if (nm == "fcproj") {
      cases.push_back({nm + " bwd-in DGELU (mics)", false, false, l.ic, N, l.oc, false, false, false, DGELU});
      cases.push_back({nm + " bwd-in plain (llm.c)", false, false, l.ic, N, l.oc, false, false, false, NONE});
    } else {
      cases.push_back({nm + " bwd-in plain (mics=llm.c)", false, false, l.ic, N, l.oc, false, false, false, NONE});
    }
    // backward weight: dW^T [ic, oc] += in [ic, N] . dout^T
    cases.push_back({nm + " bwd-w f32 +=C (mics)", false, true, l.ic, l.oc, N, true, true, false, NONE});
    cases.push_back({nm + " bwd-w f32 =", false, true, l.ic, l.oc, N, true, false, false, NONE});
    cases.push_back({nm + " bwd-w bf16 +=C (llm.c)", false, true, l.ic, l.oc, N, false, true, false, NONE});
    cases.push_back({nm + " bwd-w bf16 =", false, true, l.ic, l.oc, N, false, false, false, NONE});
  }
  const int Vp = 50304;
  cases.push_back({"logits fwd", true, false, Vp, N, C, false, false, false, NONE});
  cases.push_back({"logits bwd-in", false, false, C, N, Vp, false, false, false, NONE});
  cases.push_back({"logits bwd-w f32 +=", false, true, C, Vp, N, true, true, false, NONE});
  cases.push_back({"logits bwd-w bf16 +=", false, true, C, Vp, N, false, true, false, NONE});

  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (auto& c : cases) {
    cublasLtMatmulDesc_t desc;
    CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = c.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = c.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    cublasLtEpilogue_t epi = c.epi == BIAS ? CUBLASLT_EPILOGUE_BIAS
                             : c.epi == GELU_AUX_BIAS ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                             : c.epi == DGELU ? CUBLASLT_EPILOGUE_DGELU
                                              : CUBLASLT_EPILOGUE_DEFAULT;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    if (c.epi == GELU_AUX_BIAS || c.epi == DGELU) {
      int64_t ld = c.m;
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    }
    if (c.epi == BIAS || c.epi == GELU_AUX_BIAS)
      CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    cublasLtMatrixLayout_t la, lb, ld;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, c.ta ? c.k : c.m, c.ta ? c.m : c.k, c.ta ? c.k : c.m));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, c.tb ? c.n : c.k, c.tb ? c.k : c.n, c.tb ? c.n : c.k));
    CK(cublasLtMatrixLayoutCreate(&ld, c.d_f32 ? CUDA_R_32F : CUDA_R_16BF, c.m, c.n, c.m));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t w = kWs;
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &w, sizeof(w)));
    cublasLtMatmulHeuristicResult_t res[32];
    int found = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 32, res, &found));
    const float alpha = 1, beta = c.beta ? 1 : 0;
    const void* cin = c.c_sep ? Cm : D;
    double flops = 2.0 * c.m * c.n * c.k;
    float first = 0, best = 1e9;
    int besti = -1;
    for (int i = 0; i < found; ++i) {
      if (cublasLtMatmul(lt, desc, &alpha, A, la, B, lb, &beta, cin, ld, D, ld, &res[i].algo, ws, kWs, 0) != 0) continue;
      const int reps = 10;
      CK(cudaEventRecord(e0));
      for (int r = 0; r < reps; ++r)
        cublasLtMatmul(lt, desc, &alpha, A, la, B, lb, &beta, cin, ld, D, ld, &res[i].algo, ws, kWs, 0);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      ms /= reps;
      if (i == 0) first = ms;
      if (ms < best) best = ms, besti = i;
    }
    int tile = -1, stages = -1, cluster = -1, id = -1, splitk = -1, swz = -1;
    if (besti >= 0) {
      size_t sz;
      cublasLtMatmulAlgoConfigGetAttribute(&res[besti].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[besti].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[besti].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[besti].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[besti].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[besti].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof(swz), &sz);
    }
    printf("%-34s m%6d n%6d k%6d  cands %2d  first %7.1f us  best %7.1f us (#%2d, %5.0f TF/s)  algo %d tile %d st %d cl %d sk %d sw %d\n",
           c.name.c_str(), c.m, c.n, c.k, found, first * 1e3, best * 1e3, besti, flops / (best * 1e-3) / 1e12, id, tile,
           stages, cluster, splitk, swz);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
  }
  return 0;
}
