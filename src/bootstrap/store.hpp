#pragma once
// The rendezvous store: a small TCP key-value service that ranks use to find each other.
//
// Wire protocol (little-endian, one request -> one reply per round trip):
//   frame  = u32 magic 0x4d494353 ("MICS") | u32 length | payload[length]
//   first frame from a client is HELLO carrying the job token; the server closes the
//   connection (after an error reply) on a wrong token, an unknown opcode or a frame that
//   does not parse. Every client call has a deadline (MICS_TIMEOUT_S by default): a store
//   that is unreachable, slow or gone yields mics::Error(kTimeout/kUnavailable) naming the
//   address and the key, never a hang.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mics::bootstrap {

class StoreServer {
 public:
  // Listens on bind_addr:port (port 0: any free port) and serves in a background thread.
  StoreServer(const std::string& bind_addr, int port, std::string job_token);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Keys still absent at a probe: at most wire::kMaxListedMissing of them, and how many in all.
struct MissingKeys {
  std::vector<std::string> listed;
  uint64_t total = 0;
};

class StoreClient {
 public:
  // Connects (retrying until timeout_s: the server may start after us) and authenticates.
  StoreClient(const std::string& addr, int port, const std::string& job_token, double timeout_s);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  void set(const std::string& key, const std::string& value);
  // Blocks until the key exists (or the deadline passes) and returns its value.
  std::string get(const std::string& key);
  std::optional<std::string> try_get(const std::string& key);
  // Atomically adds delta to the integer stored at key (absent: 0) and returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  // Blocks until every key exists.
  void wait(const std::vector<std::string>& keys);
  // The same with its own deadline instead of timeout_s().
  void wait(const std::vector<std::string>& keys, double timeout_s);
  // Waits for every key, then returns their values in order (one round trip for all).
  std::vector<std::string> get_many(const std::vector<std::string>& keys);
  // Which of keys are absent now (does not wait).
  MissingKeys missing(const std::vector<std::string>& keys);
  // All `count` callers with the same name return together; names must be unique per use.
  // When set_identity() told the client its rank and count is the world size, a timeout names
  // the ranks that did not arrive.
  void barrier(const std::string& name, int count);

  // Who uses this client: improves error messages (missing ranks of a barrier, and the peer
  // rank of connection errors when a rank, not a launcher, hosts the store; -1: a launcher).
  void set_identity(int rank, int world_size, int host_rank = -1);

  double timeout_s() const { return timeout_s_; }
  std::string address() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  double timeout_s_;
};

}  // namespace mics::bootstrap
