#include "fabric/providers.hpp"

#include <cstdlib>
#include <mutex>

#include <fmt/format.h>
#include <rdma/fabric.h>
#include <rdma/fi_domain.h>

#include "base/knobs.hpp"
#include "base/strings.hpp"
#include "fabric/fabric_error.hpp"

namespace mics::fabric {

const char* to_string(Rail rail) {
  return rail == Rail::kIntra ? "intra-node" : "inter-node";
}

void throw_fi(int ret, const std::string& call, const std::string& where, std::string hint) {
  throw Error(ret == -FI_ENODATA ? ErrorKind::kUnavailable : ErrorKind::kIo,
              fmt::format("{} failed: {} ({})", call, fi_strerror(-ret), ret),
              {.layer = "fabric", .where = where, .hint = std::move(hint)});
}

std::string libfabric_version() {
  uint32_t v = fi_version();
  return fmt::format("{}.{}", FI_MAJOR(v), FI_MINOR(v));
}

void prepare_libfabric_environment() {
  static std::once_flag once;
  std::call_once(once, [] {
    (void)knobs();  // FI_PROVIDER is captured as a knob first
    unsetenv("FI_PROVIDER");
  });
}

void InfoDeleter::operator()(fi_info* info) const {
  if (info) fi_freeinfo(info);
}

fi_info* get_rdm_info(const std::string& provider) {
  prepare_libfabric_environment();
  fi_info* hints = fi_allocinfo();
  hints->caps = FI_TAGGED | FI_MSG | FI_DIRECTED_RECV;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  // What efa needs; other providers accept the same bits or ignore the ones they do not use.
  hints->domain_attr->mr_mode =
      FI_MR_LOCAL | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_VIRT_ADDR | FI_MR_ENDPOINT;
  hints->domain_attr->threading = FI_THREAD_DOMAIN;
  hints->domain_attr->control_progress = FI_PROGRESS_MANUAL;
  hints->domain_attr->data_progress = FI_PROGRESS_MANUAL;
  hints->domain_attr->av_type = FI_AV_TABLE;
  hints->tx_attr->msg_order = FI_ORDER_NONE;
  hints->rx_attr->msg_order = FI_ORDER_NONE;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  fi_info* info = nullptr;
  int ret = fi_getinfo(FI_VERSION(1, 14), nullptr, nullptr, 0, hints, &info);
  fi_freeinfo(hints);
  if (ret != 0) return nullptr;
  return info;
}

const std::vector<std::string>& rdm_providers() {
  static std::vector<std::string> names;
  static std::once_flag once;
  std::call_once(once, [] {
    prepare_libfabric_environment();
    for (const char* candidate : {"efa", "shm", "verbs;ofi_rxm", "tcp;ofi_rxm", "tcp", "verbs",
                                  "psm3", "psm2", "opx", "cxi", "udp;ofi_rxd", "sockets"}) {
      std::unique_ptr<fi_info, InfoDeleter> info(get_rdm_info(candidate));
      if (info) names.emplace_back(candidate);
    }
  });
  return names;
}

static bool present(const std::string& name) {
  for (const auto& p : rdm_providers())
    if (p == name) return true;
  return false;
}

RailChoice choose_rail(Rail rail) {
  const auto& available = rdm_providers();
  const std::string listed = available.empty() ? "none" : join(available, ", ");
  if (rail == Rail::kIntra) {
    const std::string& name = knobs().intra_provider;
    if (!present(name))
      throw Error(ErrorKind::kUnavailable,
                  fmt::format("same-node provider '{}' offers no tagged RDM endpoint", name),
                  {.layer = "fabric",
                   .where = "choosing the intra-node rail",
                   .hint = fmt::format("providers available here: {}; set MICS_INTRA_PROVIDER "
                                       "to one of them",
                                       listed)});
    return {name, knobs().intra_provider == "shm" ? "default (shm)" : "MICS_INTRA_PROVIDER"};
  }
  const std::string& wanted = knobs().inter_provider;
  if (!wanted.empty()) {
    if (present(wanted)) return {wanted, "FI_PROVIDER"};
    // FI_PROVIDER=tcp or verbs usually means the RDM layering of it.
    if (wanted.find(';') == std::string::npos && present(wanted + ";ofi_rxm"))
      return {wanted + ";ofi_rxm", fmt::format("FI_PROVIDER={} (RDM through ofi_rxm)", wanted)};
    throw Error(ErrorKind::kUnavailable,
                fmt::format("FI_PROVIDER='{}' names a provider that is not available", wanted),
                {.layer = "fabric",
                 .where = "choosing the inter-node rail",
                 .hint = fmt::format("providers available here: {}; set FI_PROVIDER to one of "
                                     "them or unset it to choose automatically",
                                     listed)});
  }
  for (const char* candidate : {"efa", "verbs;ofi_rxm", "tcp;ofi_rxm"})
    if (present(candidate))
      return {candidate, fmt::format("first available of efa, verbs;ofi_rxm, tcp;ofi_rxm")};
  throw Error(ErrorKind::kUnavailable, "no provider for the inter-node rail",
              {.layer = "fabric",
               .where = "choosing the inter-node rail",
               .hint = fmt::format("providers available here: {}; install libfabric's tcp "
                                   "provider (libfabric1) or set FI_PROVIDER",
                                   listed)});
}

}  // namespace mics::fabric
