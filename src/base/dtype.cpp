#include "base/dtype.hpp"

#include <immintrin.h>

#include <algorithm>

namespace mics {

size_t dtype_size(DType t) {
  return t == DType::kF32 ? 4 : 2;
}

const char* to_string(DType t) {
  switch (t) {
    case DType::kF32:
      return "float";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "half";
  }
  return "?";
}

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view n) {
  if (n == "float" || n == "f32" || n == "fp32" || n == "float32") return DType::kF32;
  if (n == "bf16" || n == "bfloat16") return DType::kBF16;
  if (n == "half" || n == "f16" || n == "fp16" || n == "float16") return DType::kF16;
  return std::nullopt;
}

std::optional<ReduceOp> parse_reduce_op(std::string_view n) {
  if (n == "sum") return ReduceOp::kSum;
  if (n == "avg") return ReduceOp::kAvg;
  if (n == "max") return ReduceOp::kMax;
  return std::nullopt;
}

namespace {

// Hot loops: written so that GCC vectorizes them (no aliasing between dst and the sources
// except exact overlap, branch-free conversions), built for AVX-512, AVX2 and baseline x86-64,
// one chosen at first use. (Not target_clones: its load-time resolver runs before the
// sanitizer runtimes start and crashes TSan builds.)
#define MICS_DISPATCHED(name, params, args)                                                \
  __attribute__((target("avx512f,avx512bw"))) void name##_avx512 params { name##_body args; } \
  __attribute__((target("avx2,fma"))) void name##_avx2 params { name##_body args; }        \
  void name##_baseline params { name##_body args; }                                        \
  void name params {                                                                       \
    static const auto impl = __builtin_cpu_supports("avx512bw") ? name##_avx512            \
                             : __builtin_cpu_supports("avx2")   ? name##_avx2              \
                                                                : name##_baseline;         \
    impl args;                                                                             \
  }

inline __attribute__((always_inline)) void reduce_f32_body(float* dst, const float* a,
                                                           const float* b, size_t n, ReduceOp op) {
  if (op == ReduceOp::kMax) {
    for (size_t i = 0; i < n; ++i) dst[i] = a[i] > b[i] ? a[i] : b[i];
  } else {
#pragma GCC ivdep
    for (size_t i = 0; i < n; ++i) dst[i] = a[i] + b[i];
  }
}

inline __attribute__((always_inline)) void reduce_bf16_body(uint16_t* dst, const uint16_t* a,
                                                            const uint16_t* b, size_t n,
                                                            ReduceOp op) {
  if (op == ReduceOp::kMax) {
    for (size_t i = 0; i < n; ++i) {
      const float x = bf16_to_f32(a[i]), y = bf16_to_f32(b[i]);
      dst[i] = f32_to_bf16(x > y ? x : y);
    }
  } else {
#pragma GCC ivdep
    for (size_t i = 0; i < n; ++i)
      dst[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
  }
}

MICS_DISPATCHED(reduce_f32, (float* dst, const float* a, const float* b, size_t n, ReduceOp op),
                (dst, a, b, n, op))
MICS_DISPATCHED(reduce_bf16,
                (uint16_t * dst, const uint16_t* a, const uint16_t* b, size_t n, ReduceOp op),
                (dst, a, b, n, op))

// f16 needs the F16C conversion instructions to be fast; without them, _Float16 in software.
__attribute__((target("avx2,f16c"))) void reduce_f16_f16c(uint16_t* dst, const uint16_t* a,
                                                          const uint16_t* b, size_t n,
                                                          ReduceOp op) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m256 y = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    const __m256 r = op == ReduceOp::kMax ? _mm256_max_ps(x, y) : _mm256_add_ps(x, y);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) {
    const float x = f16_to_f32(a[i]), y = f16_to_f32(b[i]);
    dst[i] = f32_to_f16(op == ReduceOp::kMax ? (x > y ? x : y) : x + y);
  }
}

void reduce_f16(uint16_t* dst, const uint16_t* a, const uint16_t* b, size_t n, ReduceOp op) {
  static const bool f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  if (f16c) return reduce_f16_f16c(dst, a, b, n, op);
  for (size_t i = 0; i < n; ++i) {
    const float x = f16_to_f32(a[i]), y = f16_to_f32(b[i]);
    dst[i] = f32_to_f16(op == ReduceOp::kMax ? std::max(x, y) : x + y);
  }
}

}  // namespace

void reduce_to(void* dst, const void* a, const void* b, size_t count, DType t, ReduceOp op) {
  switch (t) {
    case DType::kF32:
      reduce_f32(static_cast<float*>(dst), static_cast<const float*>(a),
                 static_cast<const float*>(b), count, op);
      break;
    case DType::kBF16:
      reduce_bf16(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                  static_cast<const uint16_t*>(b), count, op);
      break;
    case DType::kF16:
      reduce_f16(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                 static_cast<const uint16_t*>(b), count, op);
      break;
  }
}

void reduce_into(void* dst, const void* src, size_t count, DType t, ReduceOp op) {
  reduce_to(dst, dst, src, count, t, op);
}

void scale(void* buf, size_t count, DType t, double factor) {
  const float f = static_cast<float>(factor);
  switch (t) {
    case DType::kF32: {
      float* p = static_cast<float*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] *= f;
      break;
    }
    case DType::kBF16: {
      uint16_t* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = f32_to_bf16(bf16_to_f32(p[i]) * f);
      break;
    }
    case DType::kF16: {
      uint16_t* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = f32_to_f16(f16_to_f32(p[i]) * f);
      break;
    }
  }
}

}  // namespace mics
