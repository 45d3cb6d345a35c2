#include "base/cudnn_lib.hpp"

#if defined(MICS_HAVE_CUDNN)
#include <dlfcn.h>

#include <type_traits>

namespace mics {

namespace {

CudnnLib open_cudnn() {
  CudnnLib lib;
  const std::string soname = "libcudnn.so." + std::to_string(CUDNN_MAJOR);
  lib.handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib.handle) {
    const char* why = dlerror();
    lib.error = "cuDNN " + std::to_string(CUDNN_MAJOR) + " not found at run time (" + (why ? why : soname) +
                "); install it (NVIDIA's libcudnn" + std::to_string(CUDNN_MAJOR) +
                " packages) or add its directory to LD_LIBRARY_PATH";
    return lib;
  }
  std::string missing;
  auto find = [&](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib.handle, symbol));
    if (!fn) missing += std::string(missing.empty() ? "" : ", ") + symbol;
  };
#define MICS_CUDNN_FIND(name) find(lib.name, "cudnn" #name);
  MICS_CUDNN_FUNCTIONS(MICS_CUDNN_FIND)
#undef MICS_CUDNN_FIND
  if (!missing.empty())
    lib.error = soname + " lacks " + missing + " (an older cuDNN than the headers mics was built with?)";
  return lib;
}

}  // namespace

const CudnnLib& cudnn_lib() {
  static const CudnnLib loaded = open_cudnn();
  return loaded;
}

}  // namespace mics
#endif
