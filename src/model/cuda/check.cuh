#pragma once
// CUDA and cuBLAS error checks for the .cu files of model/cuda: a failed call throws
// mics::Error (layer "model") naming the call and the runtime's error string.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "base/error.hpp"

namespace mics::model::cuda {

[[noreturn]] inline void throw_cuda(const char* call, const std::string& what) {
  throw Error(ErrorKind::kUnavailable, std::string(call) + " failed: " + what,
              {.layer = "model", .where = "CUDA", .hint = "check the GPU with mics doctor and nvidia-smi; "
                                                          "CUDA_LAUNCH_BLOCKING=1 names the failing kernel"});
}

#define MICS_CUDA(call)                                                                  \
  do {                                                                                   \
    const cudaError_t mics_err_ = (call);                                                \
    if (mics_err_ != cudaSuccess)                                                        \
      ::mics::model::cuda::throw_cuda(#call, std::string(cudaGetErrorName(mics_err_)) + \
                                                 ": " + cudaGetErrorString(mics_err_)); \
  } while (0)

#define MICS_CUBLAS(call)                                                                  \
  do {                                                                                     \
    const cublasStatus_t mics_st_ = (call);                                                \
    if (mics_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::mics::model::cuda::throw_cuda(#call, std::string("cuBLAS status ") +               \
                                                 std::to_string(static_cast<int>(mics_st_))); \
  } while (0)

// After a kernel launch: configuration errors show up here.
#define MICS_LAUNCHED(name) MICS_CUDA(cudaGetLastError())

}  // namespace mics::model::cuda
