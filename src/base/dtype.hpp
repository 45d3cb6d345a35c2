#pragma once
// Element types of collective buffers and their conversions. Half types (bf16, f16) are
// stored as 16-bit patterns and reduced with f32 accumulation: every reduction widens to f32,
// adds, and rounds back to nearest-even once.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace mics {

enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2 };
enum class ReduceOp : uint8_t { kSum = 0, kAvg = 1, kMax = 2 };

size_t dtype_size(DType t);
const char* to_string(DType t);
const char* to_string(ReduceOp op);
std::optional<DType> parse_dtype(std::string_view name);  // "float", "f32", "bf16", "half"...
std::optional<ReduceOp> parse_reduce_op(std::string_view name);

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// Round to nearest even; a NaN stays a quiet NaN. Branch-free, so loops over it vectorise.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? quiet_nan : rounded);
}
inline float f16_to_f32(uint16_t v) {
  _Float16 h;
  std::memcpy(&h, &v, 2);
  return static_cast<float>(h);
}
inline uint16_t f32_to_f16(float f) {
  _Float16 h = static_cast<_Float16>(f);
  uint16_t v;
  std::memcpy(&v, &h, 2);
  return v;
}

// Element i of a buffer of type t, widened to f32 / stored from f32 (rounded once).
inline float load_f32(const void* buf, size_t i, DType t) {
  if (t == DType::kF32) return static_cast<const float*>(buf)[i];
  const uint16_t v = static_cast<const uint16_t*>(buf)[i];
  return t == DType::kBF16 ? bf16_to_f32(v) : f16_to_f32(v);
}
inline void store_f32(void* buf, size_t i, DType t, float v) {
  if (t == DType::kF32) static_cast<float*>(buf)[i] = v;
  else static_cast<uint16_t*>(buf)[i] = t == DType::kBF16 ? f32_to_bf16(v) : f32_to_f16(v);
}

// dst[i] = dst[i] (op) src[i] for count elements of type t. kAvg accumulates as a sum; the
// caller scales once at the end with scale().
void reduce_into(void* dst, const void* src, size_t count, DType t, ReduceOp op);
// dst[i] = a[i] (op) b[i]: saves a copy when the result goes to a third buffer.
void reduce_to(void* dst, const void* a, const void* b, size_t count, DType t, ReduceOp op);
// buf[i] *= factor, rounding half types once.
void scale(void* buf, size_t count, DType t, double factor);

}  // namespace mics
