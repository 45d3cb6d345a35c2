#pragma once
// One rail: a libfabric fabric/domain/endpoint/AV/CQ opened on one provider. Internal to
// fabric/; the comm layer only sees Transport.
#include <cstdint>
#include <string>
#include <vector>

#include "fabric/providers.hpp"

struct fi_info;
struct fid_fabric;
struct fid_domain;
struct fid_ep;
struct fid_av;
struct fid_cq;
struct fid_mr;

namespace mics::fabric {

struct Request;
struct RailCounters;

class RailEndpoint {
 public:
  RailEndpoint(Rail rail, const std::string& provider, int world_size);
  ~RailEndpoint();
  RailEndpoint(const RailEndpoint&) = delete;
  RailEndpoint& operator=(const RailEndpoint&) = delete;

  Rail rail() const { return rail_; }
  const std::string& provider() const { return provider_; }
  std::string local_address() const;  // raw endpoint name bytes
  void insert_peer(int rank, const std::string& address);

  // Post one operation; returns 0 or a negative FI_* code (-FI_EAGAIN: queue full, retry
  // after poll()).
  int post_send(Request* request, const void* buf, size_t bytes);
  // Messages up to inject_size() are injected: the buffer is reusable at once and no
  // completion will come (the caller marks the request done).
  size_t inject_size() const { return inject_size_; }
  bool needs_registration() const { return needs_local_mr_; }
  int inject(Request* request, const void* buf, size_t bytes);
  int post_recv(Request* request, void* buf, size_t bytes);
  // Reads up to a batch of completions, marks their requests done; returns the number read.
  int poll(RailCounters& counters);
  // File descriptor that becomes readable when a completion may be waiting (-1: none), and
  // whether it is safe to sleep on it now (false: completions are pending, poll() first).
  int wait_fd() const { return wait_fd_; }
  bool ready_to_sleep();

 private:
  void* descriptor_for(Request* request, const void* buf, size_t bytes);
  void finish(Request* request);

  Rail rail_;
  std::string provider_;
  fi_info* info_ = nullptr;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_av* av_ = nullptr;
  fid_cq* cq_ = nullptr;
  fid_ep* ep_ = nullptr;
  int wait_fd_ = -1;
  size_t inject_size_ = 0;
  bool needs_local_mr_ = false;
  bool mr_bind_to_endpoint_ = false;
  std::vector<uint64_t> peer_addr_;  // fi_addr_t by global rank
};

}  // namespace mics::fabric
