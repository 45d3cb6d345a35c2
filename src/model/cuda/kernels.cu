// The element-wise and row-wise CUDA kernels of the GPT (kernels.hpp says what each computes).
// Reductions over rows are deterministic: per-chunk partial sums, then one pass in chunk order.
#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "model/cuda/check.cuh"
#include "model/cuda/kernels.hpp"

namespace mics::model::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr float kEps = 1e-5f;  // LayerNorm, as kernels::kLayerNormEps
constexpr int kRowsPerChunk = 128;

cudaStream_t st(Stream s) { return static_cast<cudaStream_t>(s); }
const bf16* B(const bf16_t* p) { return reinterpret_cast<const bf16*>(p); }
bf16* B(bf16_t* p) { return reinterpret_cast<bf16*>(p); }
// A residual-stream pointer as the kernels take it (fp32 as is, bf16 as __nv_bfloat16).
const float* dev(const float* p) { return p; }
float* dev(float* p) { return p; }
const bf16* dev(const bf16_t* p) { return B(p); }
bf16* dev(bf16_t* p) { return B(p); }
template <typename X>
using DevT = std::remove_const_t<std::remove_pointer_t<decltype(dev(static_cast<const X*>(nullptr)))>>;

unsigned blocks_for(size_t count, int threads) {
  const size_t b = (count + static_cast<size_t>(threads) - 1) / static_cast<size_t>(threads);
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Four bf16 <-> float4 through one 8-byte access.
__device__ __forceinline__ float4 load4(const bf16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  const float2 fa = __bfloat1622float2(a), fb = __bfloat1622float2(b);
  return make_float4(fa.x, fa.y, fb.x, fb.y);
}
__device__ __forceinline__ void store4(bf16* p, float4 v) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<const unsigned*>(&a);
  raw.y = *reinterpret_cast<const unsigned*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

// The same for fp32 rows (the residual stream's two dtypes share the row kernels).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void add4(float4& acc, float4 v) {
  acc.x += v.x;
  acc.y += v.y;
  acc.z += v.z;
  acc.w += v.w;
}

__device__ __forceinline__ float gelu(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_grad(float x) {
  const float k = 0.7978845608028654f;
  const float u = k * (x + 0.044715f * x * x * x);
  const float t = tanhf(u);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
}

// --- LayerNorm -------------------------------------------------------------------------------

template <typename X>
__global__ void layernorm_forward_kernel(const X* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ b, bf16* __restrict__ out,
                                         float* __restrict__ mean, float* __restrict__ rstd, int rows,
                                         int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const X* xr = x + static_cast<size_t>(row) * C;
  float sum = 0;
  for (int c = lane * 4; c < C; c += 128) {
    const float4 v = load4(xr + c);
    sum += (v.x + v.y) + (v.z + v.w);
  }
  const float m = warp_sum(sum) / C;
  float sq = 0;
  for (int c = lane * 4; c < C; c += 128) {
    const float4 v = load4(xr + c);
    const float a = v.x - m, bb = v.y - m, cc = v.z - m, d = v.w - m;
    sq += (a * a + bb * bb) + (cc * cc + d * d);
  }
  const float s = rsqrtf(warp_sum(sq) / C + kEps);
  bf16* yr = out + static_cast<size_t>(row) * C;
  for (int c = lane * 4; c < C; c += 128) {
    const float4 v = load4(xr + c);
    const float4 wv = *reinterpret_cast<const float4*>(w + c);
    const float4 bv = *reinterpret_cast<const float4*>(b + c);
    store4(yr + c, make_float4((v.x - m) * s * wv.x + bv.x, (v.y - m) * s * wv.y + bv.y,
                               (v.z - m) * s * wv.z + bv.z, (v.w - m) * s * wv.w + bv.w));
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

// The same with the row held in registers (C <= 128 * kVec): x read once.
template <int kVec, typename X>
__global__ void layernorm_forward_regs(const X* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ b, bf16* __restrict__ out, float* __restrict__ mean,
                                       float* __restrict__ rstd, int rows, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const X* xr = x + static_cast<size_t>(row) * C;
  float4 v[kVec];
  float sum = 0;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int c = lane * 4 + i * 128;
    v[i] = c < C ? load4(xr + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    sum += (v[i].x + v[i].y) + (v[i].z + v[i].w);
  }
  const float m = warp_sum(sum) / C;
  float sq = 0;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int c = lane * 4 + i * 128;
    if (c < C) {
      const float a = v[i].x - m, bb = v[i].y - m, cc = v[i].z - m, d = v[i].w - m;
      sq += (a * a + bb * bb) + (cc * cc + d * d);
    }
  }
  const float s = rsqrtf(warp_sum(sq) / C + kEps);
  bf16* yr = out + static_cast<size_t>(row) * C;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int c = lane * 4 + i * 128;
    if (c < C) {
      const float4 wv = *reinterpret_cast<const float4*>(w + c);
      const float4 bv = *reinterpret_cast<const float4*>(b + c);
      store4(yr + c, make_float4((v[i].x - m) * s * wv.x + bv.x, (v[i].y - m) * s * wv.y + bv.y,
                                 (v[i].z - m) * s * wv.z + bv.z, (v[i].w - m) * s * wv.w + bv.w));
    }
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

template <typename X>
__global__ void layernorm_backward_rows(const bf16* __restrict__ dout, const X* __restrict__ x,
                                        const float* __restrict__ mean, const float* __restrict__ rstd,
                                        const float* __restrict__ w, float* __restrict__ dx,
                                        bf16* __restrict__ dx_bf16, int rows, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const size_t off = static_cast<size_t>(row) * C;
  const float m = mean[row], s = rstd[row];
  float sg = 0, sgx = 0;
  for (int c = lane * 4; c < C; c += 128) {
    const float4 g = load4(dout + off + c);
    const float4 xv = load4(x + off + c);
    const float4 wv = *reinterpret_cast<const float4*>(w + c);
    const float g0 = g.x * wv.x, g1 = g.y * wv.y, g2 = g.z * wv.z, g3 = g.w * wv.w;
    sg += (g0 + g1) + (g2 + g3);
    sgx += (g0 * (xv.x - m) + g1 * (xv.y - m)) * s + (g2 * (xv.z - m) + g3 * (xv.w - m)) * s;
  }
  const float a = warp_sum(sg) / C, bx = warp_sum(sgx) / C;
  for (int c = lane * 4; c < C; c += 128) {
    const float4 g = load4(dout + off + c);
    const float4 xv = load4(x + off + c);
    const float4 wv = *reinterpret_cast<const float4*>(w + c);
    float4 d = dx ? *reinterpret_cast<float4*>(dx + off + c) : load4(dx_bf16 + off + c);
    d.x += s * (g.x * wv.x - a - (xv.x - m) * s * bx);
    d.y += s * (g.y * wv.y - a - (xv.y - m) * s * bx);
    d.z += s * (g.z * wv.z - a - (xv.z - m) * s * bx);
    d.w += s * (g.w * wv.w - a - (xv.w - m) * s * bx);
    if (dx) *reinterpret_cast<float4*>(dx + off + c) = d;
    if (dx_bf16) store4(dx_bf16 + off + c, d);
  }
}

// Per chunk of rows, per column: sum of dout * xhat and of dout -> partial[chunk][2][C].
template <typename X>
__global__ void layernorm_backward_params(const bf16* __restrict__ dout, const X* __restrict__ x,
                                          const float* __restrict__ mean, const float* __restrict__ rstd,
                                          float* __restrict__ partial, int rows, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (c >= C) return;
  const int r0 = chunk * kRowsPerChunk, r1 = min(rows, r0 + kRowsPerChunk);
  float sw = 0, sb = 0;
  for (int r = r0; r < r1; ++r) {
    const size_t i = static_cast<size_t>(r) * C + c;
    const float g = __bfloat162float(dout[i]);
    sw += g * ((to_float(x[i]) - mean[r]) * rstd[r]);
    sb += g;
  }
  partial[(static_cast<size_t>(chunk) * 2) * C + c] = sw;
  partial[(static_cast<size_t>(chunk) * 2 + 1) * C + c] = sb;
}

// out_k[c] += sum over chunks of partial[chunk][k][c], k < planes. One block per 32 columns and
// plane (blockIdx.y): its 32 warps take every 32nd chunk, then add their sums in warp order, so
// the result does not depend on scheduling. (A thread per column summing every chunk in turn
// left most SMs idle and each thread waiting on hundreds of loads in a row: GPT-2 124M's
// LayerNorm and bias-gradient calls took 0.53 ms per step longer on an H200; 8 warps per block
// took ~4.7 us per call, most of it waiting on four rounds of loads.)
constexpr int kReduceWarps = 32;
__global__ void __launch_bounds__(32 * kReduceWarps)
    reduce_chunks(const float* __restrict__ partial, int chunks, int planes, int C, float* __restrict__ out0,
                  float* __restrict__ out1, bool accumulate) {
  __shared__ float sh[kReduceWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int c = blockIdx.x * 32 + lane, k = blockIdx.y;
  float sum = 0;
  if (c < C) {
#pragma unroll 8
    for (int j = warp; j < chunks; j += kReduceWarps) sum += partial[(static_cast<size_t>(j) * planes + k) * C + c];
  }
  sh[warp][lane] = sum;
  __syncthreads();
  if (warp == 0 && c < C) {
    float total = 0;
#pragma unroll
    for (int w = 0; w < kReduceWarps; ++w) total += sh[w][lane];
    float* out = k == 0 ? out0 : out1;
    out[c] = accumulate ? out[c] + total : total;
  }
}

void launch_reduce_chunks(const float* partial, int chunks, int planes, int C, float* out0, float* out1,
                          bool accumulate, cudaStream_t stream) {
  reduce_chunks<<<dim3(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>(planes)), 32 * kReduceWarps, 0,
                  stream>>>(partial, chunks, planes, C, out0, out1, accumulate);
  MICS_LAUNCHED(reduce_chunks);
}

__global__ void column_sum_partial(const bf16* __restrict__ x, float* __restrict__ partial, int rows,
                                   int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (c >= C) return;
  const int r0 = chunk * kRowsPerChunk, r1 = min(rows, r0 + kRowsPerChunk);
  float sum = 0;
  for (int r = r0; r < r1; ++r) sum += __bfloat162float(x[static_cast<size_t>(r) * C + c]);
  partial[static_cast<size_t>(chunk) * C + c] = sum;
}

// The fused backward's per-warp stage buffer (kPrefetch): a row of x (fp32 or bf16), then a row
// of dout (bf16), each rounded up to 16 bytes.
template <typename X>
__host__ __device__ constexpr int ln_stage_x_floats(int C) {
  return ((C * static_cast<int>(sizeof(X)) / 4 + 3) / 4) * 4;
}
template <typename X>
__host__ __device__ constexpr int ln_stage_floats(int C) {
  return ln_stage_x_floats<X>(C) + ((C / 2 + 3) / 4) * 4;
}

// One pass of LayerNorm backward for C <= 128 * kVec: each warp takes rows (grid-stride),
// keeps its row's dout and x in registers for both the row sums and dx, and accumulates
// sum(dout * xhat) and sum(dout) per column in registers; the block's warps add theirs in
// shared memory (in warp order) and write partial[block][2][C] for reduce_chunks. kColsum: also
// the column sums of the new dx -> dx_colsum[block][C], each warp adding its rows into its own
// row of shared memory (registers would cost the second block per SM): the bias gradient of the
// linear layer whose output entered the residual stream, without another pass over dx.
// kPrefetch: the warp's next row of x and dout is copied into shared memory (cp.async) while it
// computes this one, so each warp keeps twice the bytes in flight (ncu: the kernel was waiting on
// its loads at 25% occupancy, 56% of DRAM bandwidth).
// kBf16Dx: the residual gradient dx is kept in bf16 only (dx_bf16 read, added to and written;
// dx unused): 10 bytes per element instead of 16, llm.c's numerics for it.
// X: the residual stream's dtype (x, the LayerNorm's input): fp32 or bf16.
template <int kVec, bool kColsum, bool kPrefetch, bool kBf16Dx, typename X>
__global__ void __launch_bounds__(256, 2)
    layernorm_backward_fused(const bf16* __restrict__ dout, const X* __restrict__ x, const float* __restrict__ mean,
                             const float* __restrict__ rstd, const float* __restrict__ w, float* __restrict__ dx,
                             bf16* __restrict__ dx_bf16, float* __restrict__ partial, float* __restrict__ dx_colsum,
                             int rows, int C) {
  // [8 warps][2][C] parameter sums at the end (kPrefetch: over the [8 warps][2 stages][stage]
  // row buffers, stage = x's C floats + dout's C bf16 rounded up to 16 bytes), then (kColsum)
  // [8 warps][C] dx sums
  extern __shared__ float sh[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int x_floats = ln_stage_x_floats<X>(C), stage_floats = ln_stage_floats<X>(C);
  float* my_w = sh + (warp * 2) * C;
  float* my_b = sh + (warp * 2 + 1) * C;
  float* dx_sums = sh + (kPrefetch ? 16 * stage_floats : 16 * C);  // kColsum: [8 warps][C]
  float* my_d = dx_sums + warp * C;
  const int stride = gridDim.x * 8;
  // kPrefetch: row r's x and dout copied into this warp's stage buffer while the row before is
  // computed (cp.async, no registers held): twice the bytes in flight per warp.
  auto prefetch = [&](int r, int stage) {
    float* stage_base = sh + (warp * 2 + stage) * stage_floats;
    X* xs = reinterpret_cast<X*>(stage_base);
    bf16* ds = reinterpret_cast<bf16*>(stage_base + x_floats);
    const size_t o = static_cast<size_t>(r) * C;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int c = lane * 4 + i * 128;
      if (c < C) {
        __pipeline_memcpy_async(xs + c, x + o + c, 4 * sizeof(X));
        __pipeline_memcpy_async(ds + c, dout + o + c, 8);
      }
    }
    __pipeline_commit();
  };
  int stage = 0;
  if constexpr (kPrefetch)
    if (blockIdx.x * 8 + warp < rows) prefetch(blockIdx.x * 8 + warp, 0);
  float4 pw[kVec], pb[kVec];
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int c = lane * 4 + i * 128;
    pw[i] = pb[i] = zero;
    if constexpr (kColsum)
      if (c < C) *reinterpret_cast<float4*>(my_d + c) = zero;
  }
  for (int row = blockIdx.x * 8 + warp; row < rows; row += stride) {
    const size_t off = static_cast<size_t>(row) * C;
    const X* xsrc = x + off;
    const bf16* dsrc = dout + off;
    if constexpr (kPrefetch) {
      if (row + stride < rows)
        prefetch(row + stride, stage ^ 1);
      else
        __pipeline_commit();  // an empty group: the wait below still means "this row's"
      __pipeline_wait_prior(1);
      const float* stage_base = sh + (warp * 2 + stage) * stage_floats;
      xsrc = reinterpret_cast<const X*>(stage_base);
      dsrc = reinterpret_cast<const bf16*>(stage_base + x_floats);
      stage ^= 1;
    }
    const float m = mean[row], s = rstd[row];
    float4 g[kVec], xh[kVec];
    float sg = 0, sgx = 0;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int c = lane * 4 + i * 128;
      if (c < C) {
        g[i] = load4(dsrc + c);
        const float4 xv = load4(xsrc + c);
        const float4 wv = *reinterpret_cast<const float4*>(w + c);
        xh[i] = make_float4((xv.x - m) * s, (xv.y - m) * s, (xv.z - m) * s, (xv.w - m) * s);
        const float4 gx = make_float4(g[i].x * xh[i].x, g[i].y * xh[i].y, g[i].z * xh[i].z, g[i].w * xh[i].w);
        add4(pw[i], gx);
        add4(pb[i], g[i]);
        g[i] = make_float4(g[i].x * wv.x, g[i].y * wv.y, g[i].z * wv.z, g[i].w * wv.w);
        sg += (g[i].x + g[i].y) + (g[i].z + g[i].w);
        sgx += (g[i].x * xh[i].x + g[i].y * xh[i].y) + (g[i].z * xh[i].z + g[i].w * xh[i].w);
      }
    }
    const float a = warp_sum(sg) / C, bx = warp_sum(sgx) / C;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int c = lane * 4 + i * 128;
      if (c < C) {
        float4 d = kBf16Dx ? load4(dx_bf16 + off + c) : *reinterpret_cast<float4*>(dx + off + c);
        d.x += s * (g[i].x - a - xh[i].x * bx);
        d.y += s * (g[i].y - a - xh[i].y * bx);
        d.z += s * (g[i].z - a - xh[i].z * bx);
        d.w += s * (g[i].w - a - xh[i].w * bx);
        if constexpr (!kBf16Dx) *reinterpret_cast<float4*>(dx + off + c) = d;
        if (kBf16Dx || dx_bf16) store4(dx_bf16 + off + c, d);
        if constexpr (kColsum) {
          add4(*reinterpret_cast<float4*>(my_d + c), d);
        }
      }
    }
  }
  if constexpr (kPrefetch) {
    __pipeline_wait_prior(0);
    __syncthreads();  // the sums below overwrite other warps' stage buffers
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int c = lane * 4 + i * 128;
    if (c < C) {
      *reinterpret_cast<float4*>(my_w + c) = pw[i];
      *reinterpret_cast<float4*>(my_b + c) = pb[i];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float sw = 0, sb = 0, sd = 0;
    for (int k = 0; k < 8; ++k) {
      sw += sh[(k * 2) * C + c];
      sb += sh[(k * 2 + 1) * C + c];
      if constexpr (kColsum) sd += dx_sums[k * C + c];
    }
    partial[(static_cast<size_t>(blockIdx.x) * 2) * C + c] = sw;
    partial[(static_cast<size_t>(blockIdx.x) * 2 + 1) * C + c] = sb;
    if constexpr (kColsum) dx_colsum[static_cast<size_t>(blockIdx.x) * C + c] = sd;
  }
}

// Column sums of bf16 x [rows, C] (C % 8 == 0): 8 columns per thread (16-byte loads); block
// (bx, by) of a grid of G rows of blocks takes rows by*8 + warp, + G*8, ... (its 8 warps on
// interleaved rows), kColsumLoads rows' loads in flight per thread, added in warp order ->
// partial[by][C]. (Explicit batches of 4: 0.855 -> 0.833 ms of bias gradients per step for
// GPT-2 124M on an H200 against an unrolled loop; batches of 8 and 12: 0.846, 0.856.)
constexpr int kColsumLoads = 4;
__global__ void __launch_bounds__(256)
    column_sum_partial8(const bf16* __restrict__ x, float* __restrict__ partial, int rows, int C) {
  __shared__ float sh[8][256];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int c = blockIdx.x * 256 + lane * 8;
  const int stride = gridDim.y * 8;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (c < C) {
    for (int r0 = blockIdx.y * 8 + warp; r0 < rows; r0 += stride * kColsumLoads) {
      uint4 raw[kColsumLoads];
#pragma unroll
      for (int u = 0; u < kColsumLoads; ++u) {
        const int r = r0 + u * stride;
        raw[u] =
            r < rows ? *reinterpret_cast<const uint4*>(x + static_cast<size_t>(r) * C + c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kColsumLoads; ++u) {
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = __bfloat1622float2(h[j]);
          acc[2 * j] += f.x;
          acc[2 * j + 1] += f.y;
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) sh[warp][lane * 8 + j] = acc[j];
  __syncthreads();
  const int col = blockIdx.x * 256 + static_cast<int>(threadIdx.x);
  if (col < C) {
    float sum = 0;
    for (int k = 0; k < 8; ++k) sum += sh[k][threadIdx.x];
    partial[static_cast<size_t>(blockIdx.y) * C + col] = sum;
  }
}

// --- GELU --------------------------------------------------------------------------------------

__global__ void gelu_forward_kernel(const bf16* __restrict__ x, bf16* __restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(gelu(__bfloat162float(x[i])));
}

__global__ void gelu_backward_kernel(const bf16* __restrict__ x, const bf16* dout, bf16* dx, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dx[i] = __float2bfloat16(__bfloat162float(dout[i]) * gelu_grad(__bfloat162float(x[i])));
}

// --- embeddings --------------------------------------------------------------------------------

template <typename Out>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ tokens, const float* __restrict__ wte,
                                         const float* __restrict__ wpe, Out* __restrict__ out, int rows, int T,
                                         int C) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;  // float4 index
  const int c4 = C / 4;
  if (i >= static_cast<size_t>(rows) * c4) return;
  const int n = static_cast<int>(i / c4), c = static_cast<int>(i % c4) * 4, t = n % T;
  const float4 a = *reinterpret_cast<const float4*>(wte + static_cast<size_t>(tokens[n]) * C + c);
  const float4 b = *reinterpret_cast<const float4*>(wpe + static_cast<size_t>(t) * C + c);
  store4(out + static_cast<size_t>(n) * C + c, make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w));
}

template <typename T>
__global__ void embedding_backward_wte(const int32_t* __restrict__ tokens, const T* __restrict__ dout,
                                       float* __restrict__ dwte, int rows, int C) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(rows) * C) return;
  const int n = static_cast<int>(i / C), c = static_cast<int>(i % C);
  atomicAdd(dwte + static_cast<size_t>(tokens[n]) * C + c, to_float(dout[i]));
}

// Rows t < T: the batch's sum; rows T..rows-1 (the host asks for them only when writing): zero.
template <typename T>
__global__ void embedding_backward_wpe(const T* __restrict__ dout, float* __restrict__ dwpe, int batch, int seq_len,
                                       int rows, int C, bool accumulate) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(rows) * C) return;
  float sum = 0;
  if (i < static_cast<size_t>(seq_len) * C)
    for (int b = 0; b < batch; ++b) sum += to_float(dout[static_cast<size_t>(b) * seq_len * C + i]);
  dwpe[i] = accumulate ? dwpe[i] + sum : sum;
}

// --- cross-entropy -----------------------------------------------------------------------------

constexpr int kCeThreads = 512;

__device__ __forceinline__ void online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.0f;
    m = x;
  } else {
    s += __expf(x - m);
  }
}

// One block per row, two passes over it: (max, sum of exp) online, then the gradient in place.
// Each thread keeps kCeLoads 16-byte loads in flight in both passes, and the first pass folds
// each batch of 8 * kCeLoads logits into (m, s) with one rescale (their max first, then
// independent exps) rather than a serial online update per logit: 1.32 -> 1.11 ms per step
// for GPT-2 124M B16 on an H200 (one load at a time before; 2 and 3 loads: 1.16, 1.11 ms).
// Columns past v8 in a batch read as -inf.
constexpr int kCeLoads = 4;
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_kernel(bf16* __restrict__ logits, const int32_t* __restrict__ targets, float* __restrict__ losses,
                         int V, int ld, bool grad, float scale) {
  const int row = blockIdx.x;
  bf16* x = logits + static_cast<size_t>(row) * ld;
  const int v8 = (V / 8) * 8;
  const int step = kCeThreads * 8;
  const uint4 neg_inf = make_uint4(0xFF80FF80u, 0xFF80FF80u, 0xFF80FF80u, 0xFF80FF80u);
  // the thread's kCeLoads 16-byte loads of columns j0, j0 + step, ... (all issued before any use)
  auto load_batch = [&](int j0, uint4 (&raw)[kCeLoads]) {
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) {
      const int j = j0 + u * step;
      raw[u] = j < v8 ? *reinterpret_cast<const uint4*>(x + j) : neg_inf;
    }
  };
  float m = -INFINITY, s = 0;
  for (int j0 = threadIdx.x * 8; j0 < v8; j0 += step * kCeLoads) {
    uint4 raw[kCeLoads];
    load_batch(j0, raw);
    float bm = m;
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) {
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = __bfloat1622float2(h[q]);
        bm = fmaxf(bm, fmaxf(f.x, f.y));
      }
    }
    float add = 0;
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) {
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = __bfloat1622float2(h[q]);
        add += __expf(f.x - bm) + __expf(f.y - bm);
      }
    }
    s = (m == -INFINITY ? 0.0f : s * __expf(m - bm)) + add;
    m = bm;
  }
  for (int j = v8 + threadIdx.x; j < V; j += blockDim.x) online_add(m, s, __bfloat162float(x[j]));
  // Combine (m, s) pairs: the warp, then the warps through shared memory.
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mm = fmaxf(m, m2);
    s = (m == -INFINITY ? 0.0f : s * __expf(m - mm)) + (m2 == -INFINITY ? 0.0f : s2 * __expf(m2 - mm));
    m = mm;
  }
  __shared__ float sm[kCeThreads / 32], ss[kCeThreads / 32];
  __shared__ float lse_shared;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mm = sm[0], sum = 0;
    for (int k = 1; k < kCeThreads / 32; ++k) mm = fmaxf(mm, sm[k]);
    for (int k = 0; k < kCeThreads / 32; ++k) sum += ss[k] * __expf(sm[k] - mm);
    const float lse = mm + logf(sum);
    lse_shared = lse;
    losses[row] = lse - __bfloat162float(x[targets[row]]);
  }
  __syncthreads();
  if (!grad) return;
  const float lse = lse_shared;
  const int tgt = targets[row];
  for (int j0 = threadIdx.x * 8; j0 < v8; j0 += step * kCeLoads) {
    uint4 raw[kCeLoads];
    load_batch(j0, raw);
#pragma unroll
    for (int u = 0; u < kCeLoads; ++u) {
      const int j = j0 + u * step;
      __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw[u]);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = __bfloat1622float2(h[q]);
        const int c = j + 2 * q;
        const float d0 = (__expf(f.x - lse) - (c == tgt ? 1.0f : 0.0f)) * scale;
        const float d1 = (__expf(f.y - lse) - (c + 1 == tgt ? 1.0f : 0.0f)) * scale;
        h[q] = __floats2bfloat162_rn(d0, d1);
      }
      if (j < v8) *reinterpret_cast<uint4*>(x + j) = raw[u];
    }
  }
  for (int j = v8 + threadIdx.x; j < V; j += blockDim.x) {
    const float f = __bfloat162float(x[j]);
    x[j] = __float2bfloat16((__expf(f - lse) - (j == tgt ? 1.0f : 0.0f)) * scale);
  }
  // The padding columns get zero gradients: GEMMs over the padded width then add nothing.
  for (int j = V + threadIdx.x; j < ld; j += blockDim.x) x[j] = __float2bfloat16(0.0f);
}

__global__ void sum_in_order(const float* __restrict__ x, int n, float* __restrict__ out, bool add) {
  __shared__ float part[1024];
  float s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = add ? *out + part[0] : part[0];
}

// --- attention helpers -------------------------------------------------------------------------

// 8 bf16 per thread (head_dim % 8 == 0). qkv [B, T, 3, H, D] <-> q/k/v [3][B, H, T, D].
template <bool kSplit>
__global__ void split_merge_kernel(const bf16* __restrict__ in, bf16* __restrict__ out, int batch, int T,
                                   int H, int D) {
  const size_t total = static_cast<size_t>(batch) * T * 3 * H * D / 8;
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  // i enumerates the [B, T, 3, H, D/8] layout.
  const int d8 = D / 8;
  size_t r = i;
  const int dv = static_cast<int>(r % d8);
  r /= d8;
  const int h = static_cast<int>(r % H);
  r /= H;
  const int w = static_cast<int>(r % 3);
  r /= 3;
  const int t = static_cast<int>(r % T);
  const int b = static_cast<int>(r / T);
  const size_t packed = i * 8;
  const size_t plane = static_cast<size_t>(batch) * T * H * D;
  const size_t heads = w * plane + ((static_cast<size_t>(b) * H + h) * T + t) * D + dv * 8;
  if (kSplit)
    *reinterpret_cast<uint4*>(out + heads) = *reinterpret_cast<const uint4*>(in + packed);
  else
    *reinterpret_cast<uint4*>(out + packed) = *reinterpret_cast<const uint4*>(in + heads);
}

// [B, H, T, D] <-> [B, T, H, D].
template <bool kToHeads>
__global__ void permute_kernel(const bf16* __restrict__ in, bf16* __restrict__ out, int batch, int T, int H,
                               int D) {
  const size_t total = static_cast<size_t>(batch) * T * H * D / 8;
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int d8 = D / 8;
  size_t r = i;
  const int dv = static_cast<int>(r % d8);
  r /= d8;
  const int h = static_cast<int>(r % H);
  r /= H;
  const int t = static_cast<int>(r % T);
  const int b = static_cast<int>(r / T);
  const size_t tokens = i * 8;  // [B, T, H, D]
  const size_t heads = ((static_cast<size_t>(b) * H + h) * T + t) * D + dv * 8;
  if (kToHeads)
    *reinterpret_cast<uint4*>(out + heads) = *reinterpret_cast<const uint4*>(in + tokens);
  else
    *reinterpret_cast<uint4*>(out + tokens) = *reinterpret_cast<const uint4*>(in + heads);
}

// One warp per row t of a [T, T] score matrix.
__global__ void causal_softmax_kernel(bf16* __restrict__ s, int rows, int T) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int t = row % T;
  bf16* x = s + static_cast<size_t>(row) * T;
  float m = -INFINITY;
  for (int j = lane; j <= t; j += 32) m = fmaxf(m, __bfloat162float(x[j]));
  m = warp_max(m);
  float sum = 0;
  for (int j = lane; j <= t; j += 32) sum += __expf(__bfloat162float(x[j]) - m);
  const float inv = 1.0f / warp_sum(sum);
  for (int j = lane; j < T; j += 32)
    x[j] = __float2bfloat16(j <= t ? __expf(__bfloat162float(x[j]) - m) * inv : 0.0f);
}

// The same with 8 bf16 per lane and access (T % 8 == 0): one 16-byte load per chunk.
__device__ __forceinline__ void unpack8(const uint4& raw, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float2 v = __bfloat1622float2(h[q]);
    f[2 * q] = v.x;
    f[2 * q + 1] = v.y;
  }
}
__device__ __forceinline__ uint4 pack8(const float* f) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int q = 0; q < 4; ++q) h[q] = __floats2bfloat162_rn(f[2 * q], f[2 * q + 1]);
  return raw;
}

__global__ void causal_softmax_kernel8(bf16* __restrict__ s, int rows, int T) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int t = row % T;
  bf16* x = s + static_cast<size_t>(row) * T;
  float m = -INFINITY, f[8];
  for (int j0 = lane * 8; j0 <= t; j0 += 256) {
    unpack8(*reinterpret_cast<const uint4*>(x + j0), f);
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (j0 + q <= t) m = fmaxf(m, f[q]);
  }
  m = warp_max(m);
  float sum = 0;
  for (int j0 = lane * 8; j0 <= t; j0 += 256) {
    unpack8(*reinterpret_cast<const uint4*>(x + j0), f);
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (j0 + q <= t) sum += __expf(f[q] - m);
  }
  const float inv = 1.0f / warp_sum(sum);
  for (int j0 = lane * 8; j0 < T; j0 += 256) {
    if (j0 <= t) {
      unpack8(*reinterpret_cast<const uint4*>(x + j0), f);
#pragma unroll
      for (int q = 0; q < 8; ++q) f[q] = j0 + q <= t ? __expf(f[q] - m) * inv : 0.0f;
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) f[q] = 0.0f;
    }
    *reinterpret_cast<uint4*>(x + j0) = pack8(f);
  }
}

__global__ void causal_softmax_backward_kernel8(const bf16* __restrict__ p, bf16* __restrict__ dp, int rows, int T,
                                                float scale) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int t = row % T;
  const bf16* pr = p + static_cast<size_t>(row) * T;
  bf16* g = dp + static_cast<size_t>(row) * T;
  float fp[8], fg[8], dot = 0;
  for (int j0 = lane * 8; j0 <= t; j0 += 256) {  // p is zero above the diagonal
    unpack8(*reinterpret_cast<const uint4*>(pr + j0), fp);
    unpack8(*reinterpret_cast<const uint4*>(g + j0), fg);
#pragma unroll
    for (int q = 0; q < 8; ++q) dot += fp[q] * fg[q];
  }
  dot = warp_sum(dot);
  for (int j0 = lane * 8; j0 < T; j0 += 256) {
    if (j0 <= t) {
      unpack8(*reinterpret_cast<const uint4*>(pr + j0), fp);
      unpack8(*reinterpret_cast<const uint4*>(g + j0), fg);
#pragma unroll
      for (int q = 0; q < 8; ++q) fg[q] = fp[q] * (fg[q] - dot) * scale;
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) fg[q] = 0.0f;
    }
    *reinterpret_cast<uint4*>(g + j0) = pack8(fg);
  }
}

__global__ void causal_softmax_backward_kernel(const bf16* __restrict__ p, bf16* __restrict__ dp, int rows,
                                               int T, float scale) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int t = row % T;
  const bf16* pr = p + static_cast<size_t>(row) * T;
  bf16* g = dp + static_cast<size_t>(row) * T;
  float dot = 0;
  for (int j = lane; j <= t; j += 32) dot += __bfloat162float(pr[j]) * __bfloat162float(g[j]);
  dot = warp_sum(dot);
  for (int j = lane; j < T; j += 32) {
    const float v = j <= t ? __bfloat162float(pr[j]) * (__bfloat162float(g[j]) - dot) * scale : 0.0f;
    g[j] = __float2bfloat16(v);
  }
}

// --- conversions, norms, AdamW -----------------------------------------------------------------

__global__ void f32_to_bf16_kernel(const float* __restrict__ in, bf16* __restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(in[i]);
}
__global__ void bf16_to_f32_kernel(const bf16* __restrict__ in, float* __restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}
__global__ void fill_bf16_kernel(bf16* out, size_t n, float v) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(v);
}
__global__ void fill_f32_kernel(float* out, size_t n, float v) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = v;
}

constexpr int kNormBlocks = 1024, kNormThreads = 256;

template <bool kVec4>
__global__ void sum_squares_kernel(const float* __restrict__ x, size_t n, float* __restrict__ partial) {
  __shared__ float part[kNormThreads];
  float s = 0;
  const size_t first = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x,
               stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t tail = 0;
  if constexpr (kVec4) {  // x 16-byte aligned: float4 loads over the first n/4*4 elements
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (size_t i = first; i < n / 4; i += stride) {
      const float4 v = x4[i];
      s += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
    }
    tail = n / 4 * 4;
  }
  for (size_t i = tail + first; i < n; i += stride) s += x[i] * x[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

// One parameter's AdamW update (decoupled weight decay); m and v updated in place.
__device__ __forceinline__ float adamw_update(float p, float g, float& m, float& v, const AdamWArgs& a, float bc1,
                                              float bc2) {
  p -= a.lr * a.weight_decay * p;
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  return p - a.lr * (m / bc1) / (sqrtf(v / bc2) + a.eps);
}

// vec4: every array 16-byte aligned (and pbf 8-byte), so the first n/4 * 4 elements go through
// float4 loads and stores (fewer, wider memory transactions: the update is bound by its 30 bytes
// per parameter); the rest, and everything when !vec4, one element per thread.
__global__ void adamw_kernel(float* __restrict__ param, bf16* __restrict__ pbf, const float* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v, size_t n, const float* __restrict__ norm_sq,
                             AdamWArgs a, float bc1, float bc2, bool vec4) {
  const float nsq = *norm_sq;
  if (!isfinite(nsq)) return;  // the step is skipped, as the engine does
  float scale = a.grad_scale;
  if (a.clip_norm > 0) {
    const float norm = sqrtf(nsq) * a.grad_scale;  // of the averaged gradient, as the engine
    if (norm > a.clip_norm) scale *= a.clip_norm / norm;
  }
  const size_t first = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t scalar_from = 0;
  if (vec4) {
    const size_t n4 = n / 4;
    for (size_t i = first; i < n4; i += stride) {
      const float4 g = reinterpret_cast<const float4*>(grad)[i];
      float4 p = reinterpret_cast<float4*>(param)[i];
      float4 mi = reinterpret_cast<float4*>(m)[i];
      float4 vi = reinterpret_cast<float4*>(v)[i];
      p.x = adamw_update(p.x, g.x * scale, mi.x, vi.x, a, bc1, bc2);
      p.y = adamw_update(p.y, g.y * scale, mi.y, vi.y, a, bc1, bc2);
      p.z = adamw_update(p.z, g.z * scale, mi.z, vi.z, a, bc1, bc2);
      p.w = adamw_update(p.w, g.w * scale, mi.w, vi.w, a, bc1, bc2);
      reinterpret_cast<float4*>(param)[i] = p;
      reinterpret_cast<float4*>(m)[i] = mi;
      reinterpret_cast<float4*>(v)[i] = vi;
      if (pbf) store4(pbf + 4 * i, p);
    }
    scalar_from = n4 * 4;
  }
  for (size_t i = scalar_from + first; i < n; i += stride) {
    const float p = adamw_update(param[i], grad[i] * scale, m[i], v[i], a, bc1, bc2);
    param[i] = p;
    if (pbf) pbf[i] = __float2bfloat16(p);
  }
}

unsigned grid_stride_blocks(size_t n) {
  const unsigned b = blocks_for(n, 256);
  return b > 132u * 16u ? 132u * 16u : b;
}

// Calls f(std::integral_constant<int, kVec>{}) with kVec the float4s per lane that a row of C
// (<= 1024) channels needs over a warp: the row kernels are compiled for 1..6 and 8.
template <typename F>
void with_row_vectors(int channels, F&& f) {
  switch ((channels + 127) / 128) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 6:
      f(std::integral_constant<int, 6>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
      break;
  }
}

// The forward with the row in registers (x read once) for C <= 1024; else three passes over x.
template <typename X>
void launch_layernorm_forward(const X* x, const float* w, const float* b, bf16_t* out, float* mean, float* rstd,
                              int rows, int channels, Stream s) {
  const unsigned grid = blocks_for(static_cast<size_t>(rows), 8);
  if (channels % 4 == 0 && channels <= 1024) {
    with_row_vectors(channels, [&](auto vec) {
      layernorm_forward_regs<decltype(vec)::value>
          <<<grid, 256, 0, st(s)>>>(dev(x), w, b, B(out), mean, rstd, rows, channels);
    });
    MICS_LAUNCHED(layernorm_forward_regs);
    return;
  }
  layernorm_forward_kernel<<<grid, 256, 0, st(s)>>>(dev(x), w, b, B(out), mean, rstd, rows, channels);
  MICS_LAUNCHED(layernorm_forward_kernel);
}

}  // namespace

void layernorm_forward(const float* x, const float* w, const float* b, bf16_t* out, float* mean, float* rstd,
                       int rows, int channels, Stream s) {
  launch_layernorm_forward(x, w, b, out, mean, rstd, rows, channels, s);
}
void layernorm_forward(const bf16_t* x, const float* w, const float* b, bf16_t* out, float* mean, float* rstd,
                       int rows, int channels, Stream s) {
  launch_layernorm_forward(x, w, b, out, mean, rstd, rows, channels, s);
}

// The fused backward's grid: one block per 64 rows, at most 2 x 132 (partial rows).
constexpr int kLnRowsPerBlock = 64, kLnBlocks = 2 * 132;
int ln_fused_blocks(int rows) { return std::min(kLnBlocks, (rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock); }
int colsum_chunks(int rows) {
  return (rows + kRowsPerChunk - 1) / kRowsPerChunk;
}
size_t ln_partial_rows(int rows) {
  return std::max<size_t>(static_cast<size_t>(colsum_chunks(rows)), static_cast<size_t>(ln_fused_blocks(rows)));
}

size_t layernorm_partial_floats(int rows, int channels) {
  return ln_partial_rows(rows) * 2 * static_cast<size_t>(channels);
}
size_t layernorm_colsum_partial_floats(int rows, int channels) {
  return ln_partial_rows(rows) * static_cast<size_t>(channels);
}

namespace {

template <typename X>
size_t ln_fused_smem(int C, bool colsum, bool prefetch);

template <int kVec, bool kColsum, bool kPrefetch, bool kBf16Dx, typename X>
void ln_fused_variant(const bf16_t* dout, const X* x, const float* mean, const float* rstd, const float* w,
                      float* dx, bf16_t* dx_bf16, float* partial, float* dx_colsum, int rows, int C, Stream s) {
  const size_t smem = ln_fused_smem<X>(C, kColsum, kPrefetch);
  static const bool attr = [] {
    MICS_CUDA(cudaFuncSetAttribute(layernorm_backward_fused<kVec, kColsum, kPrefetch, kBf16Dx, DevT<X>>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(ln_fused_smem<X>(128 * kVec, kColsum, kPrefetch))));
    return true;
  }();
  (void)attr;
  layernorm_backward_fused<kVec, kColsum, kPrefetch, kBf16Dx, DevT<X>><<<ln_fused_blocks(rows), 256, smem, st(s)>>>(
      B(dout), dev(x), mean, rstd, w, dx, dx_bf16 ? B(dx_bf16) : nullptr, partial, dx_colsum, rows, C);
  MICS_LAUNCHED(layernorm_backward_fused);
}

// Shared memory of the fused backward's block for C channels.
template <typename X>
size_t ln_fused_smem(int C, bool colsum, bool prefetch) {
  const int stage_floats = ln_stage_floats<DevT<X>>(C);
  return (static_cast<size_t>(prefetch ? 16 * stage_floats : 16 * C) + (colsum ? 8 * static_cast<size_t>(C) : 0)) * 4;
}

// The prefetching variant where two of its blocks fit on an SM (its grid is two blocks per SM;
// at C = 1024 with the dx column sums they do not, and one block per SM would halve the warps).
template <typename X>
bool ln_prefetch_fits(int C, bool colsum) {
  static const int per_sm = [] {
    int device = 0, bytes = 0;
    MICS_CUDA(cudaGetDevice(&device));
    MICS_CUDA(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    return bytes;
  }();
  constexpr size_t kReservedPerBlock = 1024;  // the runtime's own share of each block's shared memory
  return 2 * (ln_fused_smem<X>(C, colsum, true) + kReservedPerBlock) <= static_cast<size_t>(per_sm);
}

// The fused backward's variant for this call: dx's column sums or not, the next row prefetched
// where two blocks still fit, the residual gradient in fp32 (+ bf16 copy) or in bf16 only.
template <int kVec, bool kBf16Dx, typename X>
void ln_fused_pick(const bf16_t* dout, const X* x, const float* mean, const float* rstd, const float* w, float* dx,
                   bf16_t* dx_bf16, float* partial, float* dx_colsum, int rows, int C, Stream s) {
  const bool prefetch = ln_prefetch_fits<X>(C, dx_colsum != nullptr);
  if (dx_colsum && prefetch)
    ln_fused_variant<kVec, true, true, kBf16Dx, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, dx_colsum, rows, C, s);
  else if (dx_colsum)
    ln_fused_variant<kVec, true, false, kBf16Dx, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, dx_colsum, rows, C, s);
  else if (prefetch)
    ln_fused_variant<kVec, false, true, kBf16Dx, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, nullptr, rows, C, s);
  else
    ln_fused_variant<kVec, false, false, kBf16Dx, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, nullptr, rows, C, s);
}

template <int kVec, typename X>
void ln_fused(const bf16_t* dout, const X* x, const float* mean, const float* rstd, const float* w, float* dx,
              bf16_t* dx_bf16, float* partial, float* dx_colsum, int rows, int C, Stream s) {
  if (dx)
    ln_fused_pick<kVec, false, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, dx_colsum, rows, C, s);
  else  // the residual gradient in bf16 only
    ln_fused_pick<kVec, true, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, dx_colsum, rows, C, s);
}

template <typename X>
int launch_layernorm_backward(const bf16_t* dout, const X* x, const float* mean, const float* rstd, const float* w,
                              float* dx, bf16_t* dx_bf16, float* dw, float* db, float* partial, int rows, int channels,
                              Stream s, float* dx_colsum_partial, bool accumulate) {
  if (rows <= 0) return 0;
  MICS_CHECK(dx || dx_bf16, "layernorm_backward: dx and dx_bf16 are both null (one must hold the gradient)");
  if (channels % 4 == 0 && channels <= 1024) {
    // one pass: row sums, dx and the parameter partials; then the partials in block order
    with_row_vectors(channels, [&](auto vec) {
      ln_fused<decltype(vec)::value, X>(dout, x, mean, rstd, w, dx, dx_bf16, partial, dx_colsum_partial, rows, channels,
                                     s);
    });
    launch_reduce_chunks(partial, ln_fused_blocks(rows), 2, channels, dw, db, accumulate, st(s));
    return ln_fused_blocks(rows);
  }
  const int chunks = colsum_chunks(rows);
  // The parameter sums read dout and x before the row pass changes dx (dx may alias nothing here).
  layernorm_backward_params<<<dim3(blocks_for(static_cast<size_t>(channels), 128), chunks), 128, 0, st(s)>>>(
      B(dout), dev(x), mean, rstd, partial, rows, channels);
  MICS_LAUNCHED(layernorm_backward_params);
  launch_reduce_chunks(partial, chunks, 2, channels, dw, db, accumulate, st(s));
  layernorm_backward_rows<<<blocks_for(static_cast<size_t>(rows), 8), 256, 0, st(s)>>>(
      B(dout), dev(x), mean, rstd, w, dx, dx_bf16 ? B(dx_bf16) : nullptr, rows, channels);
  MICS_LAUNCHED(layernorm_backward_rows);
  if (!dx_colsum_partial) return 0;
  column_sum_partial<<<dim3(blocks_for(static_cast<size_t>(channels), 128), chunks), 128, 0, st(s)>>>(
      B(dx_bf16), dx_colsum_partial, rows, channels);
  MICS_LAUNCHED(column_sum_partial);
  return chunks;
}

}  // namespace

int layernorm_backward(const bf16_t* dout, const float* x, const float* mean, const float* rstd, const float* w,
                       float* dx, bf16_t* dx_bf16, float* dw, float* db, float* partial, int rows, int channels,
                       Stream s, float* dx_colsum_partial, bool accumulate) {
  return launch_layernorm_backward(dout, x, mean, rstd, w, dx, dx_bf16, dw, db, partial, rows, channels, s,
                                   dx_colsum_partial, accumulate);
}
int layernorm_backward(const bf16_t* dout, const bf16_t* x, const float* mean, const float* rstd, const float* w,
                       float* dx, bf16_t* dx_bf16, float* dw, float* db, float* partial, int rows, int channels,
                       Stream s, float* dx_colsum_partial, bool accumulate) {
  return launch_layernorm_backward(dout, x, mean, rstd, w, dx, dx_bf16, dw, db, partial, rows, channels, s,
                                   dx_colsum_partial, accumulate);
}

void add_column_partials(const float* partial, int chunks, int cols, float* out, Stream s, bool accumulate) {
  if (chunks > 0)
    launch_reduce_chunks(partial, chunks, 1, cols, out, nullptr, accumulate, st(s));
  else if (!accumulate)
    MICS_CUDA(cudaMemsetAsync(out, 0, static_cast<size_t>(cols) * 4, st(s)));
}

size_t colsum_partial_floats(int rows, int cols) {
  return static_cast<size_t>((rows + kRowsPerChunk - 1) / kRowsPerChunk) * static_cast<size_t>(cols);
}

// Rows of blocks for column_sum_partial8: one wave of the GPU (a second, part-filled wave left
// most SMs idle while the last blocks ran: the qkv bias's 9 x 128 blocks were 1.09 waves), at most
// one per 128 rows (the partial buffer's size).
int colsum_row_blocks(int rows, int col_blocks) {
  static const int resident = [] {
    int device = 0, sms = 0, per_sm = 0;
    MICS_CUDA(cudaGetDevice(&device));
    MICS_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    MICS_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, column_sum_partial8, 256, 0));
    return std::max(1, sms * per_sm);
  }();
  return std::clamp(resident / col_blocks, 1, colsum_chunks(rows));
}

void column_sum(const bf16_t* x, float* out, float* partial, int rows, int cols, Stream s, bool accumulate) {
  if (rows <= 0) return;
  if (cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const unsigned col_blocks = blocks_for(static_cast<size_t>(cols), 256);
    const int row_blocks = colsum_row_blocks(rows, static_cast<int>(col_blocks));
    column_sum_partial8<<<dim3(col_blocks, static_cast<unsigned>(row_blocks)), 256, 0, st(s)>>>(B(x), partial, rows,
                                                                                                cols);
    MICS_LAUNCHED(column_sum_partial8);
    launch_reduce_chunks(partial, row_blocks, 1, cols, out, nullptr, accumulate, st(s));
    return;
  }
  const int chunks = colsum_chunks(rows);
  column_sum_partial<<<dim3(blocks_for(static_cast<size_t>(cols), 128), chunks), 128, 0, st(s)>>>(B(x), partial,
                                                                                                   rows, cols);
  MICS_LAUNCHED(column_sum_partial);
  launch_reduce_chunks(partial, chunks, 1, cols, out, nullptr, accumulate, st(s));
}

void gelu_forward(const bf16_t* x, bf16_t* out, size_t count, Stream s) {
  gelu_forward_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(B(x), B(out), count);
  MICS_LAUNCHED(gelu_forward_kernel);
}

void gelu_backward(const bf16_t* x, const bf16_t* dout, bf16_t* dx, size_t count, Stream s) {
  gelu_backward_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(B(x), B(dout), B(dx), count);
  MICS_LAUNCHED(gelu_backward_kernel);
}

namespace {
template <typename Out>
void launch_embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, Out* out, int batch,
                              int seq_len, int channels, Stream s) {
  const int rows = batch * seq_len;
  embedding_forward_kernel<<<blocks_for(static_cast<size_t>(rows) * (channels / 4), 256), 256, 0, st(s)>>>(
      tokens, wte, wpe, dev(out), rows, seq_len, channels);
  MICS_LAUNCHED(embedding_forward_kernel);
}
}  // namespace

void embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, float* out, int batch,
                       int seq_len, int channels, Stream s) {
  launch_embedding_forward(tokens, wte, wpe, out, batch, seq_len, channels, s);
}
void embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, bf16_t* out, int batch,
                       int seq_len, int channels, Stream s) {
  launch_embedding_forward(tokens, wte, wpe, out, batch, seq_len, channels, s);
}

template <typename T>
void launch_embedding_backward(const int32_t* tokens, const T* dout, float* dwte, float* dwpe, int batch, int seq_len,
                               int channels, Stream s, bool accumulate, int wpe_rows) {
  MICS_CHECK(accumulate || wpe_rows >= seq_len, "embedding_backward: writing dwpe needs wpe_rows >= seq_len");
  const int rows = batch * seq_len;
  embedding_backward_wte<<<blocks_for(static_cast<size_t>(rows) * channels, 256), 256, 0, st(s)>>>(
      tokens, dout, dwte, rows, channels);
  MICS_LAUNCHED(embedding_backward_wte);
  const int pe_rows = accumulate ? seq_len : wpe_rows;
  embedding_backward_wpe<<<blocks_for(static_cast<size_t>(pe_rows) * channels, 256), 256, 0, st(s)>>>(
      dout, dwpe, batch, seq_len, pe_rows, channels, accumulate);
  MICS_LAUNCHED(embedding_backward_wpe);
}

void embedding_backward(const int32_t* tokens, const float* dout, float* dwte, float* dwpe, int batch, int seq_len,
                        int channels, Stream s, bool accumulate, int wpe_rows) {
  launch_embedding_backward(tokens, dout, dwte, dwpe, batch, seq_len, channels, s, accumulate, wpe_rows);
}
void embedding_backward(const int32_t* tokens, const bf16_t* dout, float* dwte, float* dwpe, int batch, int seq_len,
                        int channels, Stream s, bool accumulate, int wpe_rows) {
  launch_embedding_backward(tokens, B(dout), dwte, dwpe, batch, seq_len, channels, s, accumulate, wpe_rows);
}

void cross_entropy(bf16_t* logits, const int32_t* targets, float* losses, int rows, int vocab, int ld, bool grad,
                   float grad_scale, Stream s) {
  MICS_CHECK(ld % 8 == 0 && ld >= vocab, "cross_entropy: the logits' row stride must be >= vocab and a multiple of 8");
  cross_entropy_kernel<<<static_cast<unsigned>(rows), kCeThreads, 0, st(s)>>>(B(logits), targets, losses, vocab,
                                                                              ld, grad, grad_scale);
  MICS_LAUNCHED(cross_entropy_kernel);
}

namespace {

constexpr int kSliceThreads = 256;

// One block per row: the block's threads stride over the slice's columns; the row's partials
// combine through the warps and shared memory, in a fixed order (deterministic).
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float part[kSliceThreads / 32];
  v = kMax ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float r = part[0];
  for (int k = 1; k < kSliceThreads / 32; ++k) r = kMax ? fmaxf(r, part[k]) : r + part[k];
  __syncthreads();  // part is reused by the next call
  return r;
}

__global__ void __launch_bounds__(kSliceThreads)
    vocab_slice_max_kernel(const bf16* __restrict__ logits, float* __restrict__ row_max, int vl, int ld) {
  const bf16* x = logits + static_cast<size_t>(blockIdx.x) * ld;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < vl; j += blockDim.x) m = fmaxf(m, __bfloat162float(x[j]));
  m = block_reduce<true>(m);
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

__global__ void __launch_bounds__(kSliceThreads)
    vocab_slice_sums_kernel(const bf16* __restrict__ logits, const int32_t* __restrict__ targets,
                            const float* __restrict__ row_max, float* __restrict__ sums, int rows, int vl, int ld,
                            int v0) {
  const int row = blockIdx.x;
  const bf16* x = logits + static_cast<size_t>(row) * ld;
  const float m = row_max[row];
  float z = 0;
  for (int j = threadIdx.x; j < vl; j += blockDim.x) z += __expf(__bfloat162float(x[j]) - m);
  z = block_reduce<false>(z);
  if (threadIdx.x == 0) {
    const int tgt = targets[row] - v0;
    sums[row] = z;
    sums[rows + row] = tgt >= 0 && tgt < vl ? __bfloat162float(x[tgt]) : 0.0f;
  }
}

__global__ void vocab_slice_grad_kernel(bf16* __restrict__ logits, const int32_t* __restrict__ targets,
                                        const float* __restrict__ lse, int vl, int ld, int v0, float scale) {
  const int row = blockIdx.x;
  bf16* x = logits + static_cast<size_t>(row) * ld;
  const float l = lse[row];
  const int tgt = targets[row] - v0;
  for (int j = threadIdx.x; j < ld; j += blockDim.x) {
    const float d = j < vl ? (__expf(__bfloat162float(x[j]) - l) - (j == tgt ? 1.0f : 0.0f)) * scale : 0.0f;
    x[j] = __float2bfloat16(d);
  }
}

__global__ void add_bias_residual_kernel(const float* __restrict__ y, const float* __restrict__ bias,
                                         const float* residual, float* out, size_t count, int channels) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = residual[i] + (y[i] + bias[i % static_cast<size_t>(channels)]);
}

}  // namespace

void vocab_slice_max(const bf16_t* logits, float* row_max, int rows, int vl, int ld, Stream s) {
  if (rows <= 0) return;
  vocab_slice_max_kernel<<<static_cast<unsigned>(rows), kSliceThreads, 0, st(s)>>>(B(logits), row_max, vl, ld);
  MICS_LAUNCHED(vocab_slice_max_kernel);
}

void vocab_slice_sums(const bf16_t* logits, const int32_t* targets, const float* row_max, float* sums, int rows,
                      int vl, int ld, int v0, Stream s) {
  if (rows <= 0) return;
  vocab_slice_sums_kernel<<<static_cast<unsigned>(rows), kSliceThreads, 0, st(s)>>>(B(logits), targets, row_max,
                                                                                     sums, rows, vl, ld, v0);
  MICS_LAUNCHED(vocab_slice_sums_kernel);
}

void vocab_slice_grad(bf16_t* logits, const int32_t* targets, const float* lse, int rows, int vl, int ld, int v0,
                      float grad_scale, Stream s) {
  if (rows <= 0) return;
  vocab_slice_grad_kernel<<<static_cast<unsigned>(rows), kSliceThreads, 0, st(s)>>>(B(logits), targets, lse, vl, ld,
                                                                                    v0, grad_scale);
  MICS_LAUNCHED(vocab_slice_grad_kernel);
}

void add_bias_residual(const float* y, const float* bias, const float* residual, float* out, int rows, int channels,
                       Stream s) {
  const size_t count = static_cast<size_t>(rows) * static_cast<size_t>(channels);
  if (count == 0) return;
  add_bias_residual_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(y, bias, residual, out, count, channels);
  MICS_LAUNCHED(add_bias_residual_kernel);
}

void sum_losses(const float* losses, int rows, float* loss_sum, Stream s) {
  sum_in_order<<<1, 1024, 0, st(s)>>>(losses, rows, loss_sum, true);
  MICS_LAUNCHED(sum_in_order);
}

void attention_split_heads(const bf16_t* qkv, bf16_t* out, int batch, int seq_len, int heads, int head_dim,
                           Stream s) {
  MICS_CHECK(head_dim % 8 == 0, "attention: the head size must be a multiple of 8 on CUDA");
  const size_t n = static_cast<size_t>(batch) * seq_len * 3 * heads * head_dim / 8;
  split_merge_kernel<true><<<blocks_for(n, 256), 256, 0, st(s)>>>(B(qkv), B(out), batch, seq_len, heads, head_dim);
  MICS_LAUNCHED(split_merge_kernel);
}

void attention_merge_qkv(const bf16_t* in, bf16_t* qkv, int batch, int seq_len, int heads, int head_dim,
                         Stream s) {
  const size_t n = static_cast<size_t>(batch) * seq_len * 3 * heads * head_dim / 8;
  split_merge_kernel<false><<<blocks_for(n, 256), 256, 0, st(s)>>>(B(in), B(qkv), batch, seq_len, heads, head_dim);
  MICS_LAUNCHED(split_merge_kernel);
}

void attention_permute(const bf16_t* in, bf16_t* out, int batch, int seq_len, int heads, int head_dim,
                       bool to_heads, Stream s) {
  const size_t n = static_cast<size_t>(batch) * seq_len * heads * head_dim / 8;
  if (to_heads)
    permute_kernel<true><<<blocks_for(n, 256), 256, 0, st(s)>>>(B(in), B(out), batch, seq_len, heads, head_dim);
  else
    permute_kernel<false><<<blocks_for(n, 256), 256, 0, st(s)>>>(B(in), B(out), batch, seq_len, heads, head_dim);
  MICS_LAUNCHED(permute_kernel);
}

void causal_softmax(bf16_t* scores, int bh, int seq_len, Stream s) {
  const int rows = bh * seq_len;
  if (seq_len % 8 == 0)
    causal_softmax_kernel8<<<blocks_for(static_cast<size_t>(rows), 8), 256, 0, st(s)>>>(B(scores), rows, seq_len);
  else
    causal_softmax_kernel<<<blocks_for(static_cast<size_t>(rows), 8), 256, 0, st(s)>>>(B(scores), rows, seq_len);
  MICS_LAUNCHED(causal_softmax_kernel);
}

void causal_softmax_backward(const bf16_t* p, bf16_t* dp, int bh, int seq_len, float scale, Stream s) {
  const int rows = bh * seq_len;
  if (seq_len % 8 == 0)
    causal_softmax_backward_kernel8<<<blocks_for(static_cast<size_t>(rows), 8), 256, 0, st(s)>>>(B(p), B(dp), rows,
                                                                                                 seq_len, scale);
  else
    causal_softmax_backward_kernel<<<blocks_for(static_cast<size_t>(rows), 8), 256, 0, st(s)>>>(B(p), B(dp), rows,
                                                                                                seq_len, scale);
  MICS_LAUNCHED(causal_softmax_backward_kernel);
}

void f32_to_bf16(const float* in, bf16_t* out, size_t count, Stream s) {
  f32_to_bf16_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(in, B(out), count);
  MICS_LAUNCHED(f32_to_bf16_kernel);
}
void bf16_to_f32(const bf16_t* in, float* out, size_t count, Stream s) {
  bf16_to_f32_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(B(in), out, count);
  MICS_LAUNCHED(bf16_to_f32_kernel);
}
void fill_bf16(bf16_t* out, size_t count, float value, Stream s) {
  fill_bf16_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(B(out), count, value);
  MICS_LAUNCHED(fill_bf16_kernel);
}
void fill_f32(float* out, size_t count, float value, Stream s) {
  fill_f32_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(out, count, value);
  MICS_LAUNCHED(fill_f32_kernel);
}

size_t sum_squares_partial_floats() { return kNormBlocks; }

void sum_squares(const float* x, size_t count, float* out, float* partial, Stream s) {
  // float4 loads when x is 16-byte aligned: 0.21 -> 0.12 ms for GPT-2 124M's gradients (H200)
  if (reinterpret_cast<uintptr_t>(x) % 16 == 0)
    sum_squares_kernel<true><<<kNormBlocks, kNormThreads, 0, st(s)>>>(x, count, partial);
  else
    sum_squares_kernel<false><<<kNormBlocks, kNormThreads, 0, st(s)>>>(x, count, partial);
  MICS_LAUNCHED(sum_squares_kernel);
  sum_in_order<<<1, 1024, 0, st(s)>>>(partial, kNormBlocks, out, false);
  MICS_LAUNCHED(sum_in_order);
}

void adamw(float* param, bf16_t* param_bf16, const float* grad, float* m, float* v, size_t count,
           const float* norm_sq, const AdamWArgs& a, Stream s) {
  const float bc1 = 1.0f - std::pow(a.beta1, static_cast<float>(a.t));
  const float bc2 = 1.0f - std::pow(a.beta2, static_cast<float>(a.t));
  auto aligned = [](const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; };
  const bool vec4 = aligned(param, 16) && aligned(grad, 16) && aligned(m, 16) && aligned(v, 16) &&
                    (param_bf16 == nullptr || aligned(param_bf16, 8));
  adamw_kernel<<<grid_stride_blocks(count), 256, 0, st(s)>>>(param, param_bf16 ? B(param_bf16) : nullptr, grad, m, v,
                                                             count, norm_sq, a, bc1, bc2, vec4);
  MICS_LAUNCHED(adamw_kernel);
}

}  // namespace mics::model::cuda
