#pragma once
// Errors of the fabric layer: libfabric return codes and CQ error entries become a
// mics::Error with layer "fabric", the call that failed and the libfabric message.
#include <string>

#include "base/error.hpp"

namespace mics::fabric {

[[noreturn]] void throw_fi(int ret, const std::string& call, const std::string& where,
                           std::string hint = {});

inline void check_fi(int ret, const char* call, const std::string& where) {
  if (ret < 0) throw_fi(ret, call, where);
}

}  // namespace mics::fabric
