// Small device kernels of the GPU sharded engine (shard/cuda_engine.cpp).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <string>

#include "base/error.hpp"

namespace mics::shard::cuda {

namespace {
__global__ void add_into_kernel(float* __restrict__ acc, const float* __restrict__ x, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    acc[i] += x[i];
}
__global__ void to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(x[i]);
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw Error(ErrorKind::kUnavailable, std::string(what) + " kernel launch failed: " + cudaGetErrorString(err),
                {.layer = "shard", .where = "CUDA"});
}
}  // namespace

// out[i] = bf16(x[i]), round to nearest even (as the model's f32_to_bf16), on `stream`.
void to_bf16(const float* x, void* out, size_t n, void* stream) {
  if (n == 0) return;
  const size_t blocks = std::min<size_t>((n + 255) / 256, 4096);
  to_bf16_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      x, static_cast<__nv_bfloat16*>(out), n);
  check_launch("to_bf16");
}

// acc[i] += x[i] on `stream` (a cudaStream_t).
void add_into(float* acc, const float* x, size_t n, void* stream) {
  if (n == 0) return;
  const size_t blocks = std::min<size_t>((n + 255) / 256, 4096);
  add_into_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(acc, x, n);
  check_launch("add_into");
}

}  // namespace mics::shard::cuda
