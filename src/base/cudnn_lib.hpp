#pragma once
// cuDNN, opened at run time (dlopen of libcudnn.so.<major>), not linked: a machine without it
// still runs mics (the attention then uses mics' own kernels, and `mics doctor` says why). Only
// in builds that found cuDNN's headers (MICS_HAVE_CUDNN); model/cuda/cudnn_attention.cu and
// base/cuda_info.cpp are its users.
#if defined(MICS_HAVE_CUDNN)
#include <cudnn.h>

#include <string>

namespace mics {

// The entry points used, each as X(name) for cudnn<name>.
// clang-format off
#define MICS_CUDNN_FUNCTIONS(X)                                                           \
  X(GetVersion) X(GetErrorString) X(GetLastErrorString) X(Create) X(Destroy) X(SetStream) \
  X(BackendCreateDescriptor) X(BackendDestroyDescriptor) X(BackendSetAttribute)           \
  X(BackendGetAttribute) X(BackendFinalize) X(BackendExecute)
// clang-format on

struct CudnnLib {
  std::string error;  // why it cannot be used; "" when every entry point was found
  void* handle = nullptr;
#define MICS_CUDNN_DECLARE(name) decltype(&cudnn##name) name = nullptr;
  MICS_CUDNN_FUNCTIONS(MICS_CUDNN_DECLARE)
#undef MICS_CUDNN_DECLARE
};

// Opened at the first call, kept for the process.
const CudnnLib& cudnn_lib();

}  // namespace mics
#endif
