#pragma once
// Which libfabric provider serves each rail, and why.
//
// The same-node rail uses MICS_INTRA_PROVIDER (default shm). The other-node rail uses the
// provider named by FI_PROVIDER, else the first available of efa, verbs;ofi_rxm, tcp;ofi_rxm.
// libfabric itself filters every fi_getinfo() by FI_PROVIDER, which would hide shm; so mics
// reads FI_PROVIDER as a knob and removes it from the environment before libfabric starts.
#include <string>
#include <vector>

struct fi_info;

namespace mics::fabric {

enum class Rail : int { kIntra = 0, kInter = 1 };
inline constexpr int kNumRails = 2;
const char* to_string(Rail rail);

struct RailChoice {
  std::string provider;  // e.g. "shm", "tcp;ofi_rxm", "efa"
  std::string reason;    // why this one, for logs and `mics doctor`
};

// "1.17.0": the library's version, not the header's.
std::string libfabric_version();
// Every provider (as "name" or "name;ofi_rxm" for layered ones) that offers a tagged RDM
// endpoint with the hints mics uses. Cached after the first call.
const std::vector<std::string>& rdm_providers();
// Throws mics::Error(kUnavailable) when the rail's provider is missing, listing those present.
RailChoice choose_rail(Rail rail);

// Owning fi_info for a provider with mics' hints (efa-compatible mr_mode, modes, AV table,
// tagged CQ format). Null when the provider has nothing to offer.
struct InfoDeleter {
  void operator()(fi_info* info) const;
};
fi_info* get_rdm_info(const std::string& provider);

// Consumes FI_PROVIDER from the environment (see above). Called before any libfabric call.
void prepare_libfabric_environment();

}  // namespace mics::fabric
