#include "base/cuda_info.hpp"

#include <fmt/format.h>

#include "base/cudnn_lib.hpp"

#ifdef MICS_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef MICS_HAVE_NCCL
#include <nccl.h>
#endif

namespace mics {

std::string cuda_version_text(int version) {
  if (version <= 0) return "unknown";
  return fmt::format("{}.{}", version / 1000, (version % 1000) / 10);
}

std::string nccl_version_text(int code) {
  if (code <= 0) return "unknown";
  // NCCL 2.9 and later: major*10000 + minor*100 + patch; before: major*1000 + minor*100 + patch.
  if (code >= 10000) return fmt::format("{}.{}.{}", code / 10000, (code % 10000) / 100, code % 100);
  return fmt::format("{}.{}.{}", code / 1000, (code % 1000) / 100, code % 100);
}

#ifdef MICS_HAVE_CUDA
static std::string cuda_error_text(cudaError_t err) {
  return fmt::format("{} ({}, error {})", cudaGetErrorString(err), cudaGetErrorName(err),
                     static_cast<int>(err));
}
#endif

CudaInfo query_cuda_info() {
  CudaInfo info;
#ifdef MICS_HAVE_CUDA
  info.built_with_cuda = true;
  if (cudaRuntimeGetVersion(&info.runtime_version) != cudaSuccess) info.runtime_version = 0;
  cudaError_t err = cudaDriverGetVersion(&info.driver_version);
  if (err != cudaSuccess) {
    info.driver_version = 0;
    info.driver_error = cuda_error_text(err);
  } else if (info.driver_version == 0) {
    info.driver_error = "no NVIDIA driver is installed (libcuda.so.1 not found)";
  }
  int count = 0;
  err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.gpu_error =
        fmt::format("no GPU visible: {}cudaGetDeviceCount failed: {}",
                    info.driver_version == 0 ? "no NVIDIA driver; " : "", cuda_error_text(err));
    (void)cudaGetLastError();  // not a sticky error: clear it so later calls start clean
  } else if (count == 0) {
    info.gpu_error = "no GPU visible: the driver reports 0 devices";
  }
  info.device_count = err == cudaSuccess ? count : 0;
  for (int d = 0; d < info.device_count; ++d) {
    GpuInfo gpu;
    gpu.index = d;
    cudaDeviceProp prop{};
    cudaError_t perr = cudaGetDeviceProperties(&prop, d);
    if (perr != cudaSuccess) {
      gpu.name = "(properties unavailable: " + cuda_error_text(perr) + ")";
    } else {
      gpu.name = prop.name;
      gpu.cc_major = prop.major;
      gpu.cc_minor = prop.minor;
      gpu.memory_bytes = prop.totalGlobalMem;
      gpu.multiprocessors = prop.multiProcessorCount;
    }
    char bus[32] = {0};
    if (cudaDeviceGetPCIBusId(bus, sizeof(bus), d) == cudaSuccess) gpu.pci_bus_id = bus;
    info.gpus.push_back(std::move(gpu));
  }
#endif
#ifdef MICS_HAVE_NCCL
  info.built_with_nccl = true;
  int code = 0;
  ncclResult_t nres = ncclGetVersion(&code);
  if (nres != ncclSuccess) {
    info.nccl_error = fmt::format("ncclGetVersion failed: {}", ncclGetErrorString(nres));
  } else {
    info.nccl_version = code;
  }
#endif
#ifdef MICS_HAVE_CUDNN
  info.built_with_cudnn = true;
  if (cudnn_lib().error.empty())
    info.cudnn_version = static_cast<int>(cudnn_lib().GetVersion());
  else
    info.cudnn_error = cudnn_lib().error;
#endif
  return info;
}

}  // namespace mics
