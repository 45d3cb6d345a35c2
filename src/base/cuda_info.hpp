#pragma once
// What the CUDA runtime and NCCL report about this machine, for `mics doctor` and start-up
// banners. The CUDA calls are compiled only when the build found CUDA (MICS_HAVE_CUDA) and
// NCCL (MICS_HAVE_NCCL); otherwise the query says what the build lacks. Nothing here throws:
// a machine without a GPU or driver is a fact to report, not an error.
#include <cstdint>
#include <string>
#include <vector>

namespace mics {

struct GpuInfo {
  int index = 0;
  std::string name;  // "NVIDIA H100 80GB HBM3"
  int cc_major = 0;  // compute capability
  int cc_minor = 0;
  uint64_t memory_bytes = 0;
  int multiprocessors = 0;
  std::string pci_bus_id;  // "0000:53:00.0"
};

struct CudaInfo {
  bool built_with_cuda = false;  // MICS_HAVE_CUDA
  bool built_with_nccl = false;  // MICS_HAVE_NCCL
  int runtime_version = 0;       // cudaRuntimeGetVersion: 13000 = 13.0; 0 = not known
  int driver_version = 0;        // cudaDriverGetVersion: newest CUDA the driver runs; 0 = none
  std::string driver_error;      // why the driver version is unknown
  int device_count = 0;          // visible GPUs (CUDA_VISIBLE_DEVICES applies)
  std::vector<GpuInfo> gpus;
  std::string gpu_error;   // why no GPU is visible ("no GPU visible: ..."), else ""
  int nccl_version = 0;    // ncclGetVersion: 22809 = 2.28.9; 0 = not known
  std::string nccl_error;  // why the NCCL version is unknown
  bool built_with_cudnn = false;  // MICS_HAVE_CUDNN: cuDNN's fused SDPA is the default attention
  int cudnn_version = 0;          // cudnnGetVersion of the library found at run time: 91400 = 9.14.0
  std::string cudnn_error;        // why it was not found (it is opened with dlopen)
};

// Asks the CUDA runtime and NCCL; each question that fails leaves its *_error text.
CudaInfo query_cuda_info();

std::string cuda_version_text(int version);  // 13000 -> "13.0", 12040 -> "12.4"
std::string nccl_version_text(int code);     // 22809 -> "2.28.9", 2708 -> "2.7.8"

}  // namespace mics
