#pragma once
// The transport boundary between the collectives (comm/) and libfabric (fabric/).
//
// Contract (modelled on NCCL's net plugin: narrow and non-blocking):
//  - Peers are global ranks. Each peer is reached over exactly one rail: the intra-node
//    rail (shm) when it shares our node, else the inter-node rail (efa/verbs/tcp).
//  - isend/irecv post a tagged message and return at once with a Request. The buffer must
//    stay valid and untouched until the request is done. A receive matches only a send
//    from that peer with the same 64-bit tag; delivery order is never relied on.
//  - Nothing completes unless someone calls progress() (manual progress, as efa needs).
//    A request is done when done() says so; failed() then tells whether it carries an
//    error (error() has the provider's text). Every request is released exactly once.
//  - Posting never blocks longer than the deadline: when the provider's queue is full
//    (-FI_EAGAIN) the call progresses the rails and retries.
//  - Counters: bytes and messages sent and received per rail, since creation.
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.hpp"
#include "bootstrap/store.hpp"
#include "bootstrap/topology.hpp"
#include "fabric/providers.hpp"

namespace mics::fabric {

class RailEndpoint;

struct RailCounters {
  uint64_t bytes_sent = 0;
  uint64_t msgs_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t msgs_received = 0;
};

struct Request {
  // The provider's per-operation context (an fi_context2) must come first: completions hand
  // back its address, which is the request's.
  void* provider_context[8] = {};
  bool done = false;
  bool is_send = false;
  int error = 0;  // positive FI_* code when failed
  int peer = -1;
  Rail rail = Rail::kIntra;
  size_t bytes = 0;
  uint64_t tag = 0;
  void* memory_region = nullptr;  // registration held while posted (FI_MR_LOCAL providers)
  std::string error_text;
  bool failed() const { return error != 0; }
};

class Transport {
 public:
  // Opens the rails this rank needs (intra when it has same-node peers, inter when it has
  // other-node peers), publishes this rank's addresses in the store and resolves every peer's.
  // Collective over all ranks of the job. `store` may be null only for a single-rank job.
  Transport(int rank, const bootstrap::Topology& topology, bootstrap::StoreClient* store);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return topology_.world_size; }
  const bootstrap::Topology& topology() const { return topology_; }
  Rail rail_to(int peer) const {
    return topology_.same_node(rank_, peer) ? Rail::kIntra : Rail::kInter;
  }
  // Provider name of a rail ("" when this rank has no peer on it).
  std::string provider(Rail rail) const;

  Request* isend(int peer, uint64_t tag, const void* buf, size_t bytes, const Deadline& deadline);
  Request* irecv(int peer, uint64_t tag, void* buf, size_t bytes, const Deadline& deadline);
  void release(Request* request);
  // Reads completions from every open rail; returns how many it handled.
  int progress();
  // Sleeps up to `ns` nanoseconds, waking early when a rail with a wait descriptor (the network
  // rail) has completions. Call after progress() found nothing.
  void idle_wait(long ns);

  const RailCounters& counters(Rail rail) const { return counters_[static_cast<int>(rail)]; }

 private:
  friend class RailEndpoint;
  Request* acquire();
  RailEndpoint& rail_for(int peer, const char* what);

  int rank_;
  bootstrap::Topology topology_;
  std::array<std::unique_ptr<RailEndpoint>, kNumRails> rails_;
  std::array<RailCounters, kNumRails> counters_{};
  std::deque<Request> pool_;  // stable addresses
  std::vector<Request*> free_;
};

}  // namespace mics::fabric
