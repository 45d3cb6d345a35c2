#pragma once
// Communicators and collectives over the fabric transport.
//
// A communicator is an ordered group of global ranks. All collectives are blocking, must be
// called by every member in the same order with matching arguments, and either complete or
// throw mics::Error within MICS_TIMEOUT_S naming the operation, the communicator and the
// peer that did not answer.
//
// Counts and uneven shards: collectives take the TOTAL element count of the full array.
// Member i's shard is comm::block_of(count, size(), i) (layout.hpp): the first count % size()
// members hold one element more. all_gather's input is the caller's shard; reduce_scatter's
// output is the caller's shard. Any count works, 0 and 1 included.
//
// In place: pass the same pointer as input and output (all_reduce), or for all_gather an input
// that already sits at the caller's shard offset inside the output; for reduce_scatter, the
// output may alias the input's shard.
//
// Half types (bf16, f16) are reduced with f32 arithmetic: each pairwise combine widens both
// operands, adds in f32 and rounds once.
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "fabric/transport.hpp"

namespace mics::obs {
class Observer;
}

namespace mics::comm {

enum class Algo : uint8_t {
  kAuto,
  kRing,               // pipelined, chunked ring: bandwidth-optimal
  kRecursiveDoubling,  // log-step latency algorithms (recursive doubling, Bruck, binomial tree)
  kHierarchical,       // MiCS all-gather: across nodes first, then inside each node
  kHalvingDoubling,    // all-reduce: recursive halving then doubling, the ring's bytes in 2 log2(n) steps
};
const char* to_string(Algo algo);
Algo parse_algo(const std::string& name);  // "auto", "ring", "rd", "hier", "hd"; throws on others

// Bytes and messages this communicator's operations sent, per rail.
struct Traffic {
  std::array<uint64_t, fabric::kNumRails> bytes_sent{};
  std::array<uint64_t, fabric::kNumRails> msgs_sent{};
  uint64_t bytes(fabric::Rail rail) const { return bytes_sent[static_cast<int>(rail)]; }
  uint64_t total_bytes() const { return bytes_sent[0] + bytes_sent[1]; }
};

class Communicator {
 public:
  // The communicator of all ranks of the transport, named "world".
  static std::unique_ptr<Communicator> world(fabric::Transport& transport);

  // Collective: members passing the same color form a new communicator, ordered by (key,
  // parent rank). color < 0 leaves the caller out (returns nullptr).
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name);

  int rank() const { return my_index_; }
  int size() const { return static_cast<int>(members_.size()); }
  int global_rank(int member) const { return members_[member]; }
  const std::string& name() const { return name_; }
  // Number of nodes this communicator spans, and members per node when every node holds the
  // same number of consecutive members (0 otherwise).
  int num_nodes() const { return num_nodes_; }
  int members_per_node() const { return members_per_node_; }

  void all_gather(const void* shard, void* output, size_t count, DType dtype,
                  Algo algo = Algo::kAuto);
  void reduce_scatter(const void* input, void* shard, size_t count, DType dtype, ReduceOp op,
                      Algo algo = Algo::kAuto);
  void all_reduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op,
                  Algo algo = Algo::kAuto);
  void broadcast(void* buffer, size_t count, DType dtype, int root, Algo algo = Algo::kAuto);
  void barrier();

  // Point-to-point (point_to_point.cpp): blocking, matched by (peer, tag) only, so they need
  // no agreement from the other members. `peer` is a member index; `tag` is the caller's
  // (e.g. the micro-batch), and a send matches the peer's recv with the same tag and size.
  // Like the collectives they complete or throw within MICS_TIMEOUT_S naming the peer. The
  // messages use their own tag space (bit 27 of the index), so collectives on the same
  // communicator are not disturbed; bytes count in traffic() like any send. Not recorded in
  // the observer (it knows collectives only). send_recv posts both before waiting for
  // either, so two neighbours exchanging at once cannot deadlock.
  void send(const void* buffer, size_t bytes, int peer, uint16_t tag);
  void recv(void* buffer, size_t bytes, int peer, uint16_t tag);
  void send_recv(const void* send_buffer, size_t send_bytes, int send_peer, uint16_t send_tag, void* recv_buffer,
                 size_t recv_bytes, int recv_peer, uint16_t recv_tag);

  // Which algorithm kAuto picks for an operation of this many bytes (the full array).
  Algo choose(const char* op, size_t bytes, Algo requested) const;

  const Traffic& traffic() const { return traffic_; }
  // Every collective of this communicator, and of communicators split from it later, is
  // recorded in the observer (op, algorithm, bytes per rail, start, duration); nullptr stops.
  // Internal sub-communicators are not recorded: their parent's record covers them.
  void set_observer(obs::Observer* observer);
  obs::Observer* observer() const { return observer_; }
  fabric::Transport& transport() { return transport_; }
  const fabric::Transport& transport() const { return transport_; }

  // --- used by the algorithm files ---------------------------------------------------------
  struct Internals;
  uint32_t id() const { return id_; }
  void count_send(int member, size_t bytes);
  std::byte* scratch(size_t bytes, int slot = 0);  // grow-only buffers, reused across calls
  // Sub-communicators of a multi-node communicator for the hierarchical algorithm, created
  // on first use (collective): members with the same local index (one per node), and the
  // members of our node. Their creation is a split, whose exchange counts as this
  // communicator's traffic.
  Communicator& cross_node();
  Communicator& same_node();
  uint16_t next_sequence() { return ++sequence_; }

 private:
  Communicator(fabric::Transport& transport, std::vector<int> members, int my_index, uint32_t id,
               std::string name, Communicator* parent);

  fabric::Transport& transport_;
  std::vector<int> members_;
  int my_index_;
  uint32_t id_;
  std::string name_;
  Communicator* parent_;  // traffic also counts here (internal sub-communicators)
  int num_nodes_ = 1;
  int members_per_node_ = 0;
  uint16_t sequence_ = 0;
  uint32_t next_child_id_;
  Traffic traffic_;
  obs::Observer* observer_ = nullptr;
  uint16_t observer_group_ = 0;
  std::array<std::vector<std::byte>, 2> scratch_;
  std::unique_ptr<Communicator> cross_node_;
  std::unique_ptr<Communicator> same_node_;
};

}  // namespace mics::comm
