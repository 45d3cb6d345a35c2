// Fused causal attention (kernels.hpp), flash-attention style, written for this project.
//
// Layout (FlashLayout): head bh = b * heads + h of q, k, v, dq, dk, dv is the [T, D] matrix at
// b * T * ld_qkv + h * D with row stride ld_qkv; of y, dy at b * T * ld_o + h * D, row stride ld_o.
// heads = 1, ld = D is the plain [BH, T, D]; heads = H, ld_qkv = 3C, ld_o = C reads q, k, v
// straight from the qkv GEMM's [B, T, 3, H, D] output and writes y as [B, T, H, D] (= [N, C]),
// dq, dk, dv into the [B, T, 3, H, D] gradient. lse fp32 [BH, T] holds the natural
// log-sum-exp of each row of the scaled scores (scale = 1/sqrt(D)), so P = exp(S*scale - lse).
// Tensor cores through mma.sync m16n8k16 (bf16 in, fp32 accumulate), operands moved from
// shared memory with ldmatrix; tiles of 64 queries x 64 keys, 4 warps of 16 rows each.
//
// Forward: one block per (64-query tile, head); K/V tiles streamed through shared memory (two
// stages, cp.async); online softmax in the log2 domain; y and lse written once.
// Backward: Di = rowsum(dy * y) first; then one block per (64-key tile, head) walks the query
// tiles at and below the diagonal, recomputing P^T = exp(K Q^T * scale - lse) per tile: dV and
// dK accumulate in registers, dQ (= dS K) goes to an fp32 scratch with float2 atomics and is
// converted to bf16 at the end. dS is kept without the softmax scale; dK and dQ take it once, at
// their stores. Exponentials through ex2.approx (fast_exp2), masks only on diagonal tiles.
#include <cuda_bf16.h>

#include <cstdint>

#include "model/cuda/check.cuh"
#include "model/cuda/kernels.hpp"

namespace mics::model::cuda {
namespace {

constexpr int kTile = 64;      // queries and keys per tile
constexpr int kThreads = 128;  // 4 warps x 16 rows
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

cudaStream_t st(Stream s) { return static_cast<cudaStream_t>(s); }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit alone (flush-to-zero, ~2 ulp): exp2f without --use_fast_math
// adds a range check and two multiplies around it, and the softmax's exponentials are a large
// share of both kernels' instructions. 2^-inf = 0 (masked scores).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  // src-size 0 fills the 16 bytes with zeros (rows past T)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copy rows [row0, row0 + ROWS) of a [T, D] bf16 matrix (row stride ld) into shared memory
// [ROWS][D + 8], by THREADS threads.
template <int D, int ROWS = kTile, int THREADS = kThreads>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* src, int row0, int T, int ld) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const int row = row0 + r;
    const bool valid = row < T;
    cp_async16(dst + r * (D + 8) + c, src + static_cast<size_t>(valid ? row : 0) * ld + c, valid);
  }
}

// Fragment addresses (lane-dependent) for ldmatrix x4 over a 16x16 block at (r0, c0) of a
// shared-memory matrix with row stride ld:
//   a_frag: A operand (m = rows, k = cols), non-transposed
//   b_frag: B operands of two n-tiles (n = rows, k = cols), non-transposed
//   bt_frag: B operands of two n-tiles from [k][n] storage (k = rows, n = cols), transposed
//   at_frag: A operand from [k][m] storage (k = rows, m = cols), transposed
__device__ __forceinline__ const __nv_bfloat16* a_frag(const __nv_bfloat16* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return s + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + c0 + (lane >> 4) * 8;
}
__device__ __forceinline__ const __nv_bfloat16* b_frag(const __nv_bfloat16* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return s + (r0 + (lane & 7) + (lane >> 4) * 8) * ld + c0 + ((lane >> 3) & 1) * 8;
}
__device__ __forceinline__ const __nv_bfloat16* bt_frag(const __nv_bfloat16* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return s + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + c0 + (lane >> 4) * 8;
}
__device__ __forceinline__ const __nv_bfloat16* at_frag(const __nv_bfloat16* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return s + (r0 + (lane & 7) + (lane >> 4) * 8) * ld + c0 + ((lane >> 3) & 1) * 8;
}

template <int D>
constexpr size_t fwd_smem_bytes() {
  return static_cast<size_t>(5) * kTile * (D + 8) * sizeof(__nv_bfloat16);  // Q, 2 x (K, V)
}

// Two adjacent fp32 atomic adds: one vector atomic on sm_90 (Hopper has float2 atomicAdd),
// two scalar ones on older targets, so the file builds for any CMAKE_CUDA_ARCHITECTURES.
__device__ __forceinline__ void add_pair(float* at, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(at), make_float2(a, b));
#else
  atomicAdd(at, a);
  atomicAdd(at + 1, b);
#endif
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(const __nv_bfloat16* __restrict__ q,
                                                             const __nv_bfloat16* __restrict__ k,
                                                             const __nv_bfloat16* __restrict__ v,
                                                             __nv_bfloat16* __restrict__ y, float* __restrict__ lse,
                                                             int T, float scale_log2, int heads, int ld_qkv,
                                                             int ld_o) {
  constexpr int LD = D + 8;
  constexpr int KD = D / 16;  // k-steps over the head dimension
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  // stage b: K at Qs + (1 + 2b) tiles, V at Qs + (2 + 2b) tiles
  auto Ks = [&](int b) { return Qs + (1 + 2 * b) * kTile * LD; };
  auto Vs = [&](int b) { return Qs + (2 + 2 * b) * kTile * LD; };

  const int qt = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // long rows first
  const int bi = static_cast<int>(blockIdx.y) / heads, hi = static_cast<int>(blockIdx.y) % heads;
  const size_t base = static_cast<size_t>(bi) * T * ld_qkv + static_cast<size_t>(hi) * D;
  const size_t obase = static_cast<size_t>(bi) * T * ld_o + static_cast<size_t>(hi) * D;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = qt * kTile;

  load_tile<D>(Qs, q + base, q0, T, ld_qkv);
  load_tile<D>(Ks(0), k + base, 0, T, ld_qkv);
  load_tile<D>(Vs(0), v + base, 0, T, ld_qkv);
  cp_async_commit();

  const int row_a = q0 + warp * 16 + (lane >> 2);  // this thread's two rows
  const int row_b = row_a + 8;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  uint32_t qa[KD][4];

  const int last = qt;  // key tiles 0..qt (causal)
  for (int kt = 0; kt <= last; ++kt) {
    const int buf = kt & 1;
    if (kt < last) {  // prefetch the next K/V tile into the other stage
      load_tile<D>(Ks(buf ^ 1), k + base, (kt + 1) * kTile, T, ld_qkv);
      load_tile<D>(Vs(buf ^ 1), v + base, (kt + 1) * kTile, T, ld_qkv);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (kt == 0) {
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) ldsm_x4(qa[kk], a_frag(Qs, LD, warp * 16, kk * 16));
    }
    // S = Q K^T for this warp's 16 rows x 64 keys
    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        ldsm_x4(b, b_frag(Ks(buf), LD, np * 16, kk * 16));
        mma(s[2 * np], qa[kk], b[0], b[1]);
        mma(s[2 * np + 1], qa[kk], b[2], b[3]);
      }
    }
    // causal mask on the diagonal tile; online softmax in the log2 domain, the scale folded into
    // the exponent (max over the raw scores, then 2^(s * scale - m) as one FFMA: scale > 0)
    float mx_a = m_a, mx_b = m_b;  // maxima of the scaled scores
    float raw_a = -INFINITY, raw_b = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (kt == last) {
          const int col = kt * kTile + nt * 8 + 2 * (lane & 3) + j;
          if (col > row_a) s[nt][j] = -INFINITY;
          if (col > row_b) s[nt][2 + j] = -INFINITY;
        }
        raw_a = fmaxf(raw_a, s[nt][j]);
        raw_b = fmaxf(raw_b, s[nt][2 + j]);
      }
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      raw_a = fmaxf(raw_a, __shfl_xor_sync(0xffffffffu, raw_a, off));
      raw_b = fmaxf(raw_b, __shfl_xor_sync(0xffffffffu, raw_b, off));
    }
    mx_a = fmaxf(mx_a, raw_a * scale_log2);
    mx_b = fmaxf(mx_b, raw_b * scale_log2);
    // key 0 is unmasked for every row, so the maxima are finite from the first tile on
    const float alpha_a = fast_exp2(m_a - mx_a), alpha_b = fast_exp2(m_b - mx_b);
    m_a = mx_a;
    m_b = mx_b;
    l_a *= alpha_a;
    l_b *= alpha_b;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= alpha_a;
      o[i][1] *= alpha_a;
      o[i][2] *= alpha_b;
      o[i][3] *= alpha_b;
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        s[nt][j] = fast_exp2(fmaf(s[nt][j], scale_log2, -m_a));
        s[nt][2 + j] = fast_exp2(fmaf(s[nt][2 + j], scale_log2, -m_b));
        l_a += s[nt][j];
        l_b += s[nt][2 + j];
      }
    }
    // O += P V: P from the accumulators (two n-tiles make one 16-wide k-step)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm_x4_t(b, bt_frag(Vs(buf), LD, kk * 16, dp * 16));
        mma(o[2 * dp], pa, b[0], b[1]);
        mma(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  const float inv_a = 1.f / l_a, inv_b = 1.f / l_b;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int col = nt * 8 + 2 * (lane & 3);
    if (row_a < T)
      *reinterpret_cast<uint32_t*>(y + obase + static_cast<size_t>(row_a) * ld_o + col) =
          pack_bf16(o[nt][0] * inv_a, o[nt][1] * inv_a);
    if (row_b < T)
      *reinterpret_cast<uint32_t*>(y + obase + static_cast<size_t>(row_b) * ld_o + col) =
          pack_bf16(o[nt][2] * inv_b, o[nt][3] * inv_b);
  }
  if ((lane & 3) == 0) {
    float* l = lse + static_cast<size_t>(blockIdx.y) * T;
    if (row_a < T) l[row_a] = (m_a + log2f(l_a)) * kLn2;
    if (row_b < T) l[row_b] = (m_b + log2f(l_b)) * kLn2;
  }
}

// di[bh * T + t] = sum_d dy[bh, t, d] * y[bh, t, d] (fp32). D / 8 threads per row, each with one
// 16-byte load of y and of dy (a warp per row, 4 bytes per lane, left most of the bandwidth unused:
// 34 us per layer for 50 MB at D 64).
template <int D>
__global__ void flash_bwd_dot_kernel(const __nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ dy,
                                     float* __restrict__ di, size_t rows, int T, int heads, int ld_o) {
  constexpr int kPerRow = D / 8;  // a power of two that divides 32 (D 64: 8, D 128: 16)
  static_assert(kPerRow <= 32 && (32 % kPerRow) == 0, "head size");
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t row = tid / kPerRow;
  const int part = static_cast<int>(tid % kPerRow);
  float acc = 0.f;
  if (row < rows) {
    const size_t bh = row / T, t = row % T;
    const size_t off = (bh / heads * T + t) * ld_o + bh % heads * D + part * 8;
    const uint4 a = *reinterpret_cast<const uint4*>(y + off);
    const uint4 b = *reinterpret_cast<const uint4*>(dy + off);
    const auto* ah = reinterpret_cast<const __nv_bfloat162*>(&a);
    const auto* bh2 = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 fa = __bfloat1622float2(ah[i]), fb = __bfloat1622float2(bh2[i]);
      acc += fa.x * fb.x + fa.y * fb.y;
    }
  }
#pragma unroll
  for (int off = kPerRow / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (row < rows && part == 0) di[row] = acc;
}

template <int D, int kStages, int NW>
constexpr size_t bwd_smem_bytes() {
  // K, V [16 NW][D+8], kStages x (Q, dO) tiles [64][D+8], dS^T [16 NW][72], kStages x (lse, Di) [64]
  return static_cast<size_t>(2 * 16 * NW + 2 * kStages * kTile) * (D + 8) * sizeof(__nv_bfloat16) +
         static_cast<size_t>(16 * NW) * (kTile + 8) * sizeof(__nv_bfloat16) + 2 * kStages * kTile * sizeof(float);
}

// kStages 1: each query tile's Q/dO/lse/Di are loaded and waited for before its math (the
// measured version); 2: the next tile's are fetched (cp.async) while this one is computed.
// NW warps of 16 keys each: a block owns 16 NW keys (NW 4: 64, NW 8: 128 keys, which halves the
// Q/dO loads and the dQ atomics per key); for dQ the 64 queries x D split over the warps as 4
// query groups x NW/4 column groups.
template <int D, int kStages, int kMinBlocks, int NW>
__global__ void __launch_bounds__(32 * NW, kMinBlocks) flash_bwd_kernel(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const __nv_bfloat16* __restrict__ dy, const float* __restrict__ lse, const float* __restrict__ di,
    float* __restrict__ dq_acc, __nv_bfloat16* __restrict__ dk, __nv_bfloat16* __restrict__ dv, int T, float scale,
    int heads, int ld_qkv, int ld_o) {
  constexpr int LD = D + 8, LDS = kTile + 8;
  constexpr int KD = D / 16;
  constexpr int KT = 16 * NW, TH = 32 * NW;  // keys and threads per block
  constexpr int DW = D / (NW / 4);           // dQ columns per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* Ks = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* Vs = Ks + KT * LD;
  __nv_bfloat16* stage0 = Vs + KT * LD;                        // stage b: Q, then dO
  __nv_bfloat16* dSs = stage0 + 2 * kStages * kTile * LD;      // dS^T [key][query]
  auto* stat0 = reinterpret_cast<float*>(dSs + KT * LDS);     // stage b: lse, then Di

  const int kt = blockIdx.x;  // tile 0 has the most query tiles: launched first
  const int bi = static_cast<int>(blockIdx.y) / heads, hi = static_cast<int>(blockIdx.y) % heads;
  const size_t base = static_cast<size_t>(bi) * T * ld_qkv + static_cast<size_t>(hi) * D;
  const size_t obase = static_cast<size_t>(bi) * T * ld_o + static_cast<size_t>(hi) * D;
  const int ld_acc = heads * D;  // dq_acc: dense [B, T, heads, D] fp32
  const size_t abase = static_cast<size_t>(bi) * T * ld_acc + static_cast<size_t>(hi) * D;
  const size_t rbase = static_cast<size_t>(blockIdx.y) * T;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int k0 = kt * KT;
  const int nq = (T + kTile - 1) / kTile;
  const int qfirst = k0 / kTile;  // the diagonal query tile
  const float scale_log2 = scale * kLog2e;

  // Q, dO into stage b with lse (log2 domain) and Di; the statistics by plain stores, seen after
  // the next barrier
  auto load_q = [&](int qt, int b) {
    const int q0 = qt * kTile;
    load_tile<D, kTile, TH>(stage0 + 2 * b * kTile * LD, q + base, q0, T, ld_qkv);
    load_tile<D, kTile, TH>(stage0 + (2 * b + 1) * kTile * LD, dy + obase, q0, T, ld_o);
    if (threadIdx.x < kTile) {
      const int r = q0 + static_cast<int>(threadIdx.x);
      stat0[2 * b * kTile + threadIdx.x] = r < T ? lse[rbase + r] * kLog2e : INFINITY;
      stat0[(2 * b + 1) * kTile + threadIdx.x] = r < T ? di[rbase + r] : 0.f;
    }
  };
  load_tile<D, KT, TH>(Ks, k + base, k0, T, ld_qkv);
  load_tile<D, KT, TH>(Vs, v + base, k0, T, ld_qkv);
  if constexpr (kStages == 2) load_q(qfirst, 0);
  cp_async_commit();

  const int key_a = k0 + warp * 16 + (lane >> 2), key_b = key_a + 8;
  float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) dkacc[i][j] = dvacc[i][j] = 0.f;

  for (int qt = qfirst; qt < nq; ++qt) {
    const int q0 = qt * kTile;
    const int buf = kStages == 2 ? (qt - qfirst) & 1 : 0;
    if constexpr (kStages == 2) {
      if (qt + 1 < nq) load_q(qt + 1, buf ^ 1);  // that stage was last read before the previous barrier
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      load_q(qt, 0);
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* Qs = stage0 + 2 * buf * kTile * LD;
    const __nv_bfloat16* dOs = stage0 + (2 * buf + 1) * kTile * LD;
    const float* lse_s = stat0 + 2 * buf * kTile;
    const float* di_s = stat0 + (2 * buf + 1) * kTile;

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 64 queries
    float s[8][4], dp[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = dp[i][j] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t ka[4], va[4];
      ldsm_x4(ka, a_frag(Ks, LD, warp * 16, kk * 16));
      ldsm_x4(va, a_frag(Vs, LD, warp * 16, kk * 16));
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        ldsm_x4(b, b_frag(Qs, LD, np * 16, kk * 16));
        mma(s[2 * np], ka, b[0], b[1]);
        mma(s[2 * np + 1], ka, b[2], b[3]);
        ldsm_x4(b, b_frag(dOs, LD, np * 16, kk * 16));
        mma(dp[2 * np], va, b[0], b[1]);
        mma(dp[2 * np + 1], va, b[2], b[3]);
      }
    }
    // P^T and dS^T / scale = P^T (dP^T - Di): the softmax scale is applied once, to dK before its
    // store and to dQ in its conversion. The causal mask only where this query tile overlaps the
    // block's keys; rows past T have lse = +inf, so P = 0 there.
    const bool diag = q0 < k0 + KT;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int c = nt * 8 + 2 * (lane & 3);
      const float2 l2 = *reinterpret_cast<const float2*>(lse_s + c);
      const float2 dd = *reinterpret_cast<const float2*>(di_s + c);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float lj = j ? l2.y : l2.x, dj = j ? dd.y : dd.x;
        float pa = fast_exp2(fmaf(s[nt][j], scale_log2, -lj));
        float pb = fast_exp2(fmaf(s[nt][2 + j], scale_log2, -lj));
        if (diag) {
          const int query = q0 + c + j;
          if (query < key_a) pa = 0.f;
          if (query < key_b) pb = 0.f;
        }
        s[nt][j] = pa;
        s[nt][2 + j] = pb;
        dp[nt][j] = pa * (dp[nt][j] - dj);
        dp[nt][2 + j] = pb * (dp[nt][2 + j] - dj);
      }
    }
    // dV += P^T dO ; dK += dS^T Q (queries are the k dimension here)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const uint32_t da[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                              pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                              pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
      // dS^T to shared memory for dQ: rows = this warp's keys, cols = queries
      const int r = warp * 16 + (lane >> 2), c0 = kk * 16 + 2 * (lane & 3);
      *reinterpret_cast<uint32_t*>(dSs + r * LDS + c0) = da[0];
      *reinterpret_cast<uint32_t*>(dSs + (r + 8) * LDS + c0) = da[1];
      *reinterpret_cast<uint32_t*>(dSs + r * LDS + c0 + 8) = da[2];
      *reinterpret_cast<uint32_t*>(dSs + (r + 8) * LDS + c0 + 8) = da[3];
#pragma unroll
      for (int dq = 0; dq < D / 16; ++dq) {
        uint32_t b[4];
        ldsm_x4_t(b, bt_frag(dOs, LD, kk * 16, dq * 16));
        mma(dvacc[2 * dq], pa, b[0], b[1]);
        mma(dvacc[2 * dq + 1], pa, b[2], b[3]);
        ldsm_x4_t(b, bt_frag(Qs, LD, kk * 16, dq * 16));
        mma(dkacc[2 * dq], da, b[0], b[1]);
        mma(dkacc[2 * dq + 1], da, b[2], b[3]);
      }
    }
    __syncthreads();
    // dQ (this warp's 16 queries x DW columns) = dS K = (dS^T)^T K, added to the fp32 scratch
    const int qw = warp & 3, dw0 = (warp >> 2) * DW;
    float dqacc[DW / 8][4];
#pragma unroll
    for (int i = 0; i < DW / 8; ++i) dqacc[i][0] = dqacc[i][1] = dqacc[i][2] = dqacc[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KT / 16; ++kk) {  // over the block's keys
      uint32_t a[4];
      ldsm_x4_t(a, at_frag(dSs, LDS, kk * 16, qw * 16));
#pragma unroll
      for (int dq = 0; dq < DW / 16; ++dq) {
        uint32_t b[4];
        ldsm_x4_t(b, bt_frag(Ks, LD, kk * 16, dw0 + dq * 16));
        mma(dqacc[2 * dq], a, b[0], b[1]);
        mma(dqacc[2 * dq + 1], a, b[2], b[3]);
      }
    }
    const int qa_row = q0 + qw * 16 + (lane >> 2), qb_row = qa_row + 8;
#pragma unroll
    for (int nt = 0; nt < DW / 8; ++nt) {
      const int col = dw0 + nt * 8 + 2 * (lane & 3);
      if (qa_row < T)
        add_pair(dq_acc + abase + static_cast<size_t>(qa_row) * ld_acc + col, dqacc[nt][0], dqacc[nt][1]);
      if (qb_row < T)
        add_pair(dq_acc + abase + static_cast<size_t>(qb_row) * ld_acc + col, dqacc[nt][2], dqacc[nt][3]);
    }
    __syncthreads();  // Qs, dOs and dSs are refilled next
  }
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int col = nt * 8 + 2 * (lane & 3);
    if (key_a < T) {
      *reinterpret_cast<uint32_t*>(dk + base + static_cast<size_t>(key_a) * ld_qkv + col) =
          pack_bf16(dkacc[nt][0] * scale, dkacc[nt][1] * scale);
      *reinterpret_cast<uint32_t*>(dv + base + static_cast<size_t>(key_a) * ld_qkv + col) =
          pack_bf16(dvacc[nt][0], dvacc[nt][1]);
    }
    if (key_b < T) {
      *reinterpret_cast<uint32_t*>(dk + base + static_cast<size_t>(key_b) * ld_qkv + col) =
          pack_bf16(dkacc[nt][2] * scale, dkacc[nt][3] * scale);
      *reinterpret_cast<uint32_t*>(dv + base + static_cast<size_t>(key_b) * ld_qkv + col) =
          pack_bf16(dvacc[nt][2], dvacc[nt][3]);
    }
  }
}

// scale * dq_acc (dense fp32 [rows, cols]) -> bf16 rows of stride ld_out (cols a multiple of 4).
__global__ void dq_to_bf16_kernel(const float* __restrict__ in, __nv_bfloat16* __restrict__ out, size_t n, int cols,
                                  int ld_out, float scale) {
  const size_t i = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  const size_t r = i / cols, c = i % cols;
  const float4 x = *reinterpret_cast<const float4*>(in + i);
  __nv_bfloat16* o = out + r * ld_out + c;
  *reinterpret_cast<__nv_bfloat162*>(o) = __floats2bfloat162_rn(x.x * scale, x.y * scale);
  *reinterpret_cast<__nv_bfloat162*>(o + 2) = __floats2bfloat162_rn(x.z * scale, x.w * scale);
}

template <int D>
void forward_d(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* y, float* lse, int bh, int T,
               const FlashLayout& L, Stream s) {
  constexpr size_t smem = fwd_smem_bytes<D>();
  static bool attr = [] {
    MICS_CUDA(cudaFuncSetAttribute(flash_fwd_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(smem)));
    return true;
  }();
  (void)attr;
  const dim3 grid((T + kTile - 1) / kTile, bh);
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(D));
  flash_fwd_kernel<D><<<grid, kThreads, smem, st(s)>>>(
      reinterpret_cast<const __nv_bfloat16*>(q), reinterpret_cast<const __nv_bfloat16*>(k),
      reinterpret_cast<const __nv_bfloat16*>(v), reinterpret_cast<__nv_bfloat16*>(y), lse, T, scale_log2, L.heads,
      L.ld_qkv, L.ld_o);
  MICS_LAUNCHED(flash_fwd_kernel);
}

template <int D, int kStages, int kMinBlocks, int NW = 4>
void backward_launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dy, const float* lse,
                     const float* di, float* dq_acc, bf16_t* dk, bf16_t* dv, int bh, int T, const FlashLayout& L,
                     Stream s) {
  constexpr size_t smem = bwd_smem_bytes<D, kStages, NW>();
  static bool attr = [] {
    MICS_CUDA(cudaFuncSetAttribute(flash_bwd_kernel<D, kStages, kMinBlocks, NW>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return true;
  }();
  (void)attr;
  const dim3 grid((T + 16 * NW - 1) / (16 * NW), bh);
  flash_bwd_kernel<D, kStages, kMinBlocks, NW><<<grid, 32 * NW, smem, st(s)>>>(
      reinterpret_cast<const __nv_bfloat16*>(q), reinterpret_cast<const __nv_bfloat16*>(k),
      reinterpret_cast<const __nv_bfloat16*>(v), reinterpret_cast<const __nv_bfloat16*>(dy), lse, di, dq_acc,
      reinterpret_cast<__nv_bfloat16*>(dk), reinterpret_cast<__nv_bfloat16*>(dv), T,
      1.0f / sqrtf(static_cast<float>(D)), L.heads, L.ld_qkv, L.ld_o);
  MICS_LAUNCHED(flash_bwd_kernel);
}

template <int D>
void backward_d(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* y, const bf16_t* dy,
                const float* lse, bf16_t* dq, bf16_t* dk, bf16_t* dv, float* scratch, int bh, int T, int stages,
                int min_blocks, int key_tile, const FlashLayout& L, Stream s) {
  const size_t rows = static_cast<size_t>(bh) * T;
  float* dq_acc = scratch;
  float* di = scratch + rows * D;
  if (L.ld_o % 8 != 0 || reinterpret_cast<uintptr_t>(y) % 16 != 0 || reinterpret_cast<uintptr_t>(dy) % 16 != 0)
    throw_cuda("flash_attention_backward", "y and dy must be 16-byte aligned with a row stride (ld_o = " +
                                               std::to_string(L.ld_o) + ") that is a multiple of 8 elements");
  MICS_CUDA(cudaMemsetAsync(dq_acc, 0, rows * D * sizeof(float), st(s)));
  flash_bwd_dot_kernel<D><<<static_cast<unsigned>((rows * (D / 8) + 255) / 256), 256, 0, st(s)>>>(
      reinterpret_cast<const __nv_bfloat16*>(y), reinterpret_cast<const __nv_bfloat16*>(dy), di, rows, T, L.heads,
      L.ld_o);
  MICS_LAUNCHED(flash_bwd_dot_kernel);
  // min_blocks 3 (launch bounds capping registers at 168) only where 3 blocks' shared memory fits
  bool done = false;
  if constexpr (D == 64) {
    if (key_tile == 128) {  // 8 warps, one block per SM at 224 registers
      if (stages == 2)
        backward_launch<D, 2, 1, 8>(q, k, v, dy, lse, di, dq_acc, dk, dv, bh, T, L, s);
      else
        backward_launch<D, 1, 1, 8>(q, k, v, dy, lse, di, dq_acc, dk, dv, bh, T, L, s);
      done = true;
    } else if (min_blocks >= 3) {
      if (stages == 2)
        backward_launch<D, 2, 3>(q, k, v, dy, lse, di, dq_acc, dk, dv, bh, T, L, s);
      else
        backward_launch<D, 1, 3>(q, k, v, dy, lse, di, dq_acc, dk, dv, bh, T, L, s);
      done = true;
    }
  }
  if (!done) {
    if (stages == 2)
      backward_launch<D, 2, 1>(q, k, v, dy, lse, di, dq_acc, dk, dv, bh, T, L, s);
    else
      backward_launch<D, 1, 1>(q, k, v, dy, lse, di, dq_acc, dk, dv, bh, T, L, s);
  }
  const size_t n = rows * D;
  dq_to_bf16_kernel<<<static_cast<unsigned>((n / 4 + 255) / 256), 256, 0, st(s)>>>(
      dq_acc, reinterpret_cast<__nv_bfloat16*>(dq), n, L.heads * D, L.ld_qkv, 1.0f / sqrtf(static_cast<float>(D)));
  MICS_LAUNCHED(dq_to_bf16_kernel);
}

FlashLayout resolve(FlashLayout L, int head_dim) {
  if (L.heads < 1) L.heads = 1;
  if (L.ld_qkv <= 0) L.ld_qkv = L.heads * head_dim;
  if (L.ld_o <= 0) L.ld_o = L.heads * head_dim;
  return L;
}

}  // namespace

bool flash_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

void flash_attention_forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* y, float* lse, int bh,
                             int seq_len, int head_dim, Stream s, const FlashLayout& layout) {
  if (bh <= 0 || seq_len <= 0) return;
  const FlashLayout L = resolve(layout, head_dim);
  switch (head_dim) {
    case 64: return forward_d<64>(q, k, v, y, lse, bh, seq_len, L, s);
    case 128: return forward_d<128>(q, k, v, y, lse, bh, seq_len, L, s);
    default: throw_cuda("flash_attention_forward", "no fused attention kernel for head size " + std::to_string(head_dim));
  }
}

void flash_attention_backward(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* y, const bf16_t* dy,
                              const float* lse, bf16_t* dq, bf16_t* dk, bf16_t* dv, float* scratch, int bh,
                              int seq_len, int head_dim, Stream s, int stages, const FlashLayout& layout,
                              int min_blocks, int key_tile) {
  if (bh <= 0 || seq_len <= 0) return;
  const FlashLayout L = resolve(layout, head_dim);
  switch (head_dim) {
    case 64:
      return backward_d<64>(q, k, v, y, dy, lse, dq, dk, dv, scratch, bh, seq_len, stages, min_blocks, key_tile, L, s);
    case 128:
      return backward_d<128>(q, k, v, y, dy, lse, dq, dk, dv, scratch, bh, seq_len, stages, min_blocks, key_tile, L, s);
    default: throw_cuda("flash_attention_backward", "no fused attention kernel for head size " + std::to_string(head_dim));
  }
}

// dQ in fp32 (dense [B, T, heads, D]), then Di [BH, T]
size_t flash_scratch_floats(int bh, int seq_len, int head_dim) {
  return static_cast<size_t>(bh) * seq_len * (head_dim + 1);
}

}  // namespace mics::model::cuda
