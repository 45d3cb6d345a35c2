#include "base/dtype.hpp"

#include <algorithm>

namespace mics {

size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

const char* to_string(DType t) {
  switch (t) {
    case DType::kF32: return "float";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "half";
  }
  return "?";
}

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
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

template <typename Load, typename Store>
void reduce_half(uint16_t* dst, const uint16_t* a, const uint16_t* b, size_t n, ReduceOp op,
                 Load load, Store store) {
  if (op == ReduceOp::kMax) {
    for (size_t i = 0; i < n; ++i) dst[i] = store(std::max(load(a[i]), load(b[i])));
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = store(load(a[i]) + load(b[i]));
  }
}

void reduce_f32(float* __restrict dst, const float* a, const float* b, size_t n, ReduceOp op) {
  if (op == ReduceOp::kMax) {
    for (size_t i = 0; i < n; ++i) dst[i] = std::max(a[i], b[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = a[i] + b[i];
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
      reduce_half(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                  static_cast<const uint16_t*>(b), count, op, bf16_to_f32, f32_to_bf16);
      break;
    case DType::kF16:
      reduce_half(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                  static_cast<const uint16_t*>(b), count, op, f16_to_f32, f32_to_f16);
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
