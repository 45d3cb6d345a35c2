// Fused causal attention (kernels.hpp). Not written yet: flash_supported() says no, and the
// model takes the cuBLASLt batched-GEMM path.
#include "model/cuda/check.cuh"
#include "model/cuda/kernels.hpp"

namespace mics::model::cuda {

bool flash_supported(int) { return false; }

void flash_attention_forward(const bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, float*, int, int, int, Stream) {
  throw_cuda("flash_attention_forward", "not built: no fused attention kernel for this head size");
}

void flash_attention_backward(const bf16_t*, const bf16_t*, const bf16_t*, const bf16_t*, const bf16_t*,
                              const float*, bf16_t*, bf16_t*, bf16_t*, float*, int, int, int, Stream) {
  throw_cuda("flash_attention_backward", "not built: no fused attention kernel for this head size");
}

size_t flash_scratch_floats(int, int, int) { return 0; }

}  // namespace mics::model::cuda
