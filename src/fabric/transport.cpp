#include "fabric/transport.hpp"

#include <poll.h>
#include <time.h>

#include <fmt/format.h>
#include <rdma/fi_errno.h>

#include "base/log.hpp"
#include "fabric/endpoint.hpp"
#include "fabric/fabric_error.hpp"

namespace mics::fabric {

namespace {

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  auto value = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(value(hex[i]) * 16 + value(hex[i + 1]));
  return out;
}

}  // namespace

Transport::Transport(int rank, const bootstrap::Topology& topology, bootstrap::StoreClient* store)
    : rank_(rank), topology_(topology) {
  const int world = topology_.world_size;
  bool needs[kNumRails] = {false, false};
  for (int peer = 0; peer < world; ++peer)
    if (peer != rank_) needs[static_cast<int>(rail_to(peer))] = true;

  for (Rail rail : {Rail::kIntra, Rail::kInter}) {
    const int r = static_cast<int>(rail);
    if (!needs[r]) continue;
    RailChoice choice = choose_rail(rail);
    rails_[r] = std::make_unique<RailEndpoint>(rail, choice.provider, world);
    store->set(fmt::format("fabric/{}/{}", r, rank_), to_hex(rails_[r]->local_address()));
    log::debug("{} rail: {} ({})", to_string(rail), choice.provider, choice.reason);
  }
  std::vector<std::string> keys;
  std::vector<int> peers;
  for (int peer = 0; peer < world; ++peer) {
    if (peer == rank_) continue;
    keys.push_back(fmt::format("fabric/{}/{}", static_cast<int>(rail_to(peer)), peer));
    peers.push_back(peer);
  }
  if (keys.empty()) return;
  const std::vector<std::string> addresses = store->get_many(keys);
  for (size_t i = 0; i < peers.size(); ++i)
    rails_[static_cast<int>(rail_to(peers[i]))]->insert_peer(peers[i], from_hex(addresses[i]));
}

Transport::~Transport() = default;

std::string Transport::provider(Rail rail) const {
  const auto& endpoint = rails_[static_cast<int>(rail)];
  return endpoint ? endpoint->provider() : std::string();
}

Request* Transport::acquire() {
  if (free_.empty()) {
    pool_.emplace_back();
    return &pool_.back();
  }
  Request* request = free_.back();
  free_.pop_back();
  *request = Request{};
  return request;
}

void Transport::release(Request* request) {
  MICS_CHECK(request->done, "a request was released before it completed");
  free_.push_back(request);
}

RailEndpoint& Transport::rail_for(int peer, const char* what) {
  if (peer < 0 || peer >= world_size() || peer == rank_)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("{} to invalid peer rank {}", what, peer),
                {.layer = "fabric", .where = what, .peer = peer});
  return *rails_[static_cast<int>(rail_to(peer))];
}

template <typename Post>
static void post_with_retry(Transport& transport, Request* request, const Deadline& deadline,
                            const char* call, Post post) {
  Backoff backoff;
  while (true) {
    int ret = post();
    if (ret == 0) return;
    if (ret != -FI_EAGAIN)
      throw_fi(ret, call,
               fmt::format("posting {} bytes to rank {}", request->bytes, request->peer));
    // Queue full: drain completions so the provider can make room.
    if (transport.progress() > 0)
      backoff.reset();
    else if (long ns = backoff.step())
      transport.idle_wait(ns);
    if (deadline.expired())
      throw Error(
          ErrorKind::kTimeout,
          fmt::format("{} stayed refused (queue full) for {:.1f} s", call, deadline.budget_s()),
          {.layer = "fabric",
           .where = fmt::format("{} to rank {}", call, request->peer),
           .peer = request->peer,
           .hint = "the peer is not receiving; is it alive?"});
  }
}

Request* Transport::isend(int peer, uint64_t tag, const void* buf, size_t bytes,
                          const Deadline& deadline) {
  RailEndpoint& endpoint = rail_for(peer, "isend");
  Request* request = acquire();
  request->is_send = true;
  request->peer = peer;
  request->rail = endpoint.rail();
  request->bytes = bytes;
  request->tag = tag;
  // Small messages (within the provider's inject size, and only when no registration is
  // needed) are injected: one less completion to wait for on the latency path.
  if (bytes <= endpoint.inject_size() && !endpoint.needs_registration()) {
    post_with_retry(*this, request, deadline, "fi_tinject",
                    [&] { return endpoint.inject(request, buf, bytes); });
    request->done = true;
  } else {
    post_with_retry(*this, request, deadline, "fi_tsend",
                    [&] { return endpoint.post_send(request, buf, bytes); });
  }
  auto& c = counters_[static_cast<int>(endpoint.rail())];
  c.bytes_sent += bytes;
  c.msgs_sent += 1;
  return request;
}

Request* Transport::irecv(int peer, uint64_t tag, void* buf, size_t bytes,
                          const Deadline& deadline) {
  RailEndpoint& endpoint = rail_for(peer, "irecv");
  Request* request = acquire();
  request->is_send = false;
  request->peer = peer;
  request->rail = endpoint.rail();
  request->bytes = bytes;
  request->tag = tag;
  post_with_retry(*this, request, deadline, "fi_trecv",
                  [&] { return endpoint.post_recv(request, buf, bytes); });
  return request;
}

void Transport::idle_wait(long ns) {
  pollfd fds[kNumRails];
  nfds_t count = 0;
  for (auto& rail : rails_) {
    if (!rail || rail->wait_fd() < 0) continue;
    if (!rail->ready_to_sleep()) return;  // completions pending: go read them
    fds[count++] = {rail->wait_fd(), POLLIN, 0};
  }
  timespec ts{0, ns};
  if (count)
    ppoll(fds, count, &ts, nullptr);
  else
    nanosleep(&ts, nullptr);
}

int Transport::progress() {
  int handled = 0;
  for (int r = 0; r < kNumRails; ++r)
    if (rails_[r]) handled += rails_[r]->poll(counters_[r]);
  return handled;
}

}  // namespace mics::fabric
