#include "fabric/endpoint.hpp"

#include <dirent.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <mutex>

#include <fmt/format.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>

#include "base/log.hpp"
#include "fabric/fabric_error.hpp"
#include "fabric/transport.hpp"

namespace mics::fabric {

namespace {
static_assert(sizeof(Request::provider_context) >= sizeof(fi_context2));

// libfabric's shm provider names its shared-memory region after the process id
// ("/dev/shm/<pid>:<domain>:<endpoint>") and removes it at exit, but not when the process is
// killed. A later process that gets the same pid then fails fi_enable with EBUSY. No live
// process but us can own a region with our pid, so before our first shm endpoint such
// regions are stale leftovers: remove them.
void remove_stale_shm_regions() {
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string prefix = std::to_string(getpid()) + ":";
    DIR* dir = opendir("/dev/shm");
    if (!dir) return;
    while (dirent* entry = readdir(dir)) {
      const std::string name = entry->d_name;
      if (name.rfind(prefix, 0) == 0) {
        log::debug("removing stale shm region /dev/shm/{} left by a killed process", name);
        shm_unlink(("/" + name).c_str());
      }
    }
    closedir(dir);
  });
}

void close_fid(fid* f) {
  if (f) fi_close(f);
}
}  // namespace

RailEndpoint::RailEndpoint(Rail rail, const std::string& provider, int world_size)
    : rail_(rail), provider_(provider), peer_addr_(world_size, FI_ADDR_UNSPEC) {
  const std::string where =
      fmt::format("opening the {} rail on provider {}", to_string(rail), provider);
  if (provider == "shm") remove_stale_shm_regions();
  info_ = get_rdm_info(provider);
  if (!info_)
    throw Error(ErrorKind::kUnavailable,
                fmt::format("provider '{}' offers no tagged RDM endpoint", provider),
                {.layer = "fabric",
                 .where = where,
                 .hint = "run `mics doctor` to see the providers this host has"});
  needs_local_mr_ = (info_->domain_attr->mr_mode & FI_MR_LOCAL) != 0;
  mr_bind_to_endpoint_ = (info_->domain_attr->mr_mode & FI_MR_ENDPOINT) != 0;
  inject_size_ = info_->tx_attr->inject_size;

  check_fi(fi_fabric(info_->fabric_attr, &fabric_, nullptr), "fi_fabric", where);
  check_fi(fi_domain(fabric_, info_, &domain_, nullptr), "fi_domain", where);

  // A CQ with a file descriptor lets an idle rank sleep until the provider has news instead
  // of napping blindly (the network rail wakes it on arrival); providers without one poll.
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_TAGGED;
  cq_attr.wait_obj = rail == Rail::kInter ? FI_WAIT_FD : FI_WAIT_NONE;
  cq_attr.size = 0;  // provider default
  if (cq_attr.wait_obj != FI_WAIT_NONE && fi_cq_open(domain_, &cq_attr, &cq_, nullptr) == 0) {
    if (fi_control(&cq_->fid, FI_GETWAIT, &wait_fd_) != 0) wait_fd_ = -1;
  } else {
    cq_attr.wait_obj = FI_WAIT_NONE;
    check_fi(fi_cq_open(domain_, &cq_attr, &cq_, nullptr), "fi_cq_open", where);
  }

  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  av_attr.count = static_cast<size_t>(world_size);
  check_fi(fi_av_open(domain_, &av_attr, &av_, nullptr), "fi_av_open", where);

  check_fi(fi_endpoint(domain_, info_, &ep_, nullptr), "fi_endpoint", where);
  check_fi(fi_ep_bind(ep_, &av_->fid, 0), "fi_ep_bind(av)", where);
  check_fi(fi_ep_bind(ep_, &cq_->fid, FI_TRANSMIT | FI_RECV), "fi_ep_bind(cq)", where);
  check_fi(fi_enable(ep_), "fi_enable", where);
}

RailEndpoint::~RailEndpoint() {
  close_fid(ep_ ? &ep_->fid : nullptr);
  close_fid(av_ ? &av_->fid : nullptr);
  close_fid(cq_ ? &cq_->fid : nullptr);
  close_fid(domain_ ? &domain_->fid : nullptr);
  close_fid(fabric_ ? &fabric_->fid : nullptr);
  if (info_) fi_freeinfo(info_);
}

std::string RailEndpoint::local_address() const {
  std::string name(256, '\0');
  size_t len = name.size();
  int ret = fi_getname(&ep_->fid, name.data(), &len);
  if (ret == -FI_ETOOSMALL) {
    name.resize(len);
    ret = fi_getname(&ep_->fid, name.data(), &len);
  }
  check_fi(ret, "fi_getname", fmt::format("{} rail", to_string(rail_)));
  name.resize(len);
  return name;
}

void RailEndpoint::insert_peer(int rank, const std::string& address) {
  fi_addr_t addr = FI_ADDR_UNSPEC;
  int ret = fi_av_insert(av_, address.data(), 1, &addr, 0, nullptr);
  if (ret != 1)
    throw Error(ErrorKind::kPeerFailure,
                fmt::format("fi_av_insert of the peer's {} address failed ({})", provider_,
                            ret < 0 ? fi_strerror(-ret) : "address not accepted"),
                {.layer = "fabric",
                 .where = fmt::format("{} rail address exchange", to_string(rail_)),
                 .peer = rank,
                 .hint = "the ranks may run different libfabric versions or providers; check "
                         "`mics doctor` on both hosts"});
  peer_addr_[rank] = addr;
}

void* RailEndpoint::descriptor_for(Request* request, const void* buf, size_t bytes) {
  if (!needs_local_mr_ || bytes == 0) return nullptr;
  // Registered per operation and released on completion: correct for any buffer the caller
  // passes (no stale registrations after free), at the cost of a registration per message.
  fid_mr* mr = nullptr;
  const uint64_t access = request->is_send ? FI_SEND : FI_RECV;
  check_fi(fi_mr_reg(domain_, buf, bytes, access, 0, 0, 0, &mr, nullptr), "fi_mr_reg",
           fmt::format("registering {} bytes on the {} rail", bytes, to_string(rail_)));
  if (mr_bind_to_endpoint_) {
    check_fi(fi_mr_bind(mr, &ep_->fid, 0), "fi_mr_bind", "binding a memory region");
    check_fi(fi_mr_enable(mr), "fi_mr_enable", "enabling a memory region");
  }
  request->memory_region = mr;
  return fi_mr_desc(mr);
}

int RailEndpoint::post_send(Request* request, const void* buf, size_t bytes) {
  void* desc = request->memory_region ? fi_mr_desc(static_cast<fid_mr*>(request->memory_region))
                                      : descriptor_for(request, buf, bytes);
  ssize_t ret = fi_tsend(ep_, buf, bytes, desc, peer_addr_[request->peer], request->tag, request);
  return static_cast<int>(ret);
}

int RailEndpoint::inject(Request* request, const void* buf, size_t bytes) {
  return static_cast<int>(fi_tinject(ep_, buf, bytes, peer_addr_[request->peer], request->tag));
}

int RailEndpoint::post_recv(Request* request, void* buf, size_t bytes) {
  void* desc = request->memory_region ? fi_mr_desc(static_cast<fid_mr*>(request->memory_region))
                                      : descriptor_for(request, buf, bytes);
  ssize_t ret =
      fi_trecv(ep_, buf, bytes, desc, peer_addr_[request->peer], request->tag, 0, request);
  return static_cast<int>(ret);
}

void RailEndpoint::finish(Request* request) {
  if (request->memory_region) {
    fi_close(&static_cast<fid_mr*>(request->memory_region)->fid);
    request->memory_region = nullptr;
  }
  request->done = true;
}

bool RailEndpoint::ready_to_sleep() {
  if (wait_fd_ < 0) return true;
  fid* fids[1] = {&cq_->fid};
  return fi_trywait(fabric_, fids, 1) == FI_SUCCESS;
}

int RailEndpoint::poll(RailCounters& counters) {
  fi_cq_tagged_entry entries[16];
  ssize_t n = fi_cq_read(cq_, entries, 16);
  if (n > 0) {
    for (ssize_t i = 0; i < n; ++i) {
      auto* request = static_cast<Request*>(entries[i].op_context);
      if (!request->is_send) {
        request->bytes = entries[i].len;
        counters.bytes_received += entries[i].len;
        counters.msgs_received += 1;
      }
      finish(request);
    }
    return static_cast<int>(n);
  }
  if (n == -FI_EAGAIN) return 0;
  if (n == -FI_EAVAIL) {
    fi_cq_err_entry err{};
    ssize_t got = fi_cq_readerr(cq_, &err, 0);
    if (got < 0) return 0;
    auto* request = static_cast<Request*>(err.op_context);
    if (!request) return 0;
    request->error = err.err ? err.err : FI_EIO;
    char buf[256];
    const char* detail = fi_cq_strerror(cq_, err.prov_errno, err.err_data, buf, sizeof(buf));
    request->error_text = fmt::format("{}{}{}", fi_strerror(request->error), detail ? ": " : "",
                                      detail ? detail : "");
    if (err.err == FI_ETRUNC)
      request->error_text += fmt::format(" (message of {} bytes longer than the {} posted)",
                                         err.olen + err.len, err.len);
    finish(request);
    return 1;
  }
  throw_fi(static_cast<int>(n), "fi_cq_read", fmt::format("{} rail", to_string(rail_)));
}

}  // namespace mics::fabric
