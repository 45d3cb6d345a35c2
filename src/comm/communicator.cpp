#include "comm/communicator.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>

#include "base/knobs.hpp"
#include "comm/algorithms.hpp"
#include "comm/layout.hpp"
#include "obs/observer.hpp"

namespace mics::comm {

const char* to_string(Algo algo) {
  switch (algo) {
    case Algo::kAuto:
      return "auto";
    case Algo::kRing:
      return "ring";
    case Algo::kRecursiveDoubling:
      return "rd";
    case Algo::kHierarchical:
      return "hier";
    case Algo::kHalvingDoubling:
      return "hd";
  }
  return "?";
}

Algo parse_algo(const std::string& name) {
  if (name == "auto" || name.empty()) return Algo::kAuto;
  if (name == "ring") return Algo::kRing;
  if (name == "rd" || name == "tree" || name == "bruck") return Algo::kRecursiveDoubling;
  if (name == "hier" || name == "hierarchical") return Algo::kHierarchical;
  if (name == "hd" || name == "rabenseifner") return Algo::kHalvingDoubling;
  throw Error(ErrorKind::kInvalidArgument, fmt::format("unknown algorithm '{}'", name),
              {.layer = "comm", .hint = "use one of auto, ring, rd, hier, hd"});
}

Communicator::Communicator(fabric::Transport& transport, std::vector<int> members, int my_index,
                           uint32_t id, std::string name, Communicator* parent)
    : transport_(transport),
      members_(std::move(members)),
      my_index_(my_index),
      id_(id),
      name_(std::move(name)),
      parent_(parent),
      next_child_id_(id + 1) {
  const auto& topo = transport_.topology();
  std::vector<int> node_order;  // nodes in order of first member
  std::map<int, int> per_node;
  for (int g : members_) {
    if (!per_node.count(topo.node_of[g])) node_order.push_back(topo.node_of[g]);
    ++per_node[topo.node_of[g]];
  }
  num_nodes_ = static_cast<int>(node_order.size());
  const int n = size() / num_nodes_;
  members_per_node_ = n;
  if (size() % num_nodes_ != 0) members_per_node_ = 0;
  for (int m = 0; m < size() && members_per_node_; ++m)
    if (topo.node_of[members_[m]] != node_order[m / n]) members_per_node_ = 0;
}

std::unique_ptr<Communicator> Communicator::world(fabric::Transport& transport) {
  std::vector<int> members(transport.world_size());
  for (int i = 0; i < transport.world_size(); ++i) members[i] = i;
  return std::unique_ptr<Communicator>(
      new Communicator(transport, std::move(members), transport.rank(), 1, "world", nullptr));
}

std::unique_ptr<Communicator> Communicator::split(int color, int key, const std::string& name) {
  // Every member learns (color, key, next free id) of all members. The new id is the largest
  // next-free id among the parent's members: no member has used it with any communicator, so
  // tags never collide between communicators that share a rank.
  struct Entry {
    int32_t color, key;
    uint32_t next_id, pad;
  };
  std::vector<Entry> all(static_cast<size_t>(size()));
  Entry mine{color, key, next_child_id_, 0};
  all_gather(&mine, all.data(), all.size() * sizeof(Entry) / sizeof(float), DType::kF32,
             Algo::kRecursiveDoubling);
  uint32_t id = 0;
  for (const auto& e : all) id = std::max(id, e.next_id);
  next_child_id_ = id + 1;
  if (id > 0xffffu)
    throw Error(ErrorKind::kUnavailable, "too many communicators (65535) created in this job",
                {.layer = "comm", .where = fmt::format("split of '{}'", name_)});
  if (color < 0) return nullptr;
  std::vector<std::pair<std::pair<int, int>, int>> chosen;  // ((key, parent rank), global)
  for (int m = 0; m < size(); ++m)
    if (all[m].color == color) chosen.push_back({{all[m].key, m}, members_[m]});
  std::sort(chosen.begin(), chosen.end());
  std::vector<int> members;
  int my_index = -1;
  for (const auto& [order, global] : chosen) {
    if (order.second == my_index_) my_index = static_cast<int>(members.size());
    members.push_back(global);
  }
  auto child = std::unique_ptr<Communicator>(
      new Communicator(transport_, std::move(members), my_index, id, name, nullptr));
  child->next_child_id_ = next_child_id_;
  child->set_observer(observer_);
  return child;
}

Communicator& Communicator::cross_node() {
  if (!cross_node_) {
    const int n = members_per_node_;
    MICS_CHECK(n > 0, "cross_node() needs a uniform node layout");
    // Internal sub-communicators count their traffic in this communicator too.
    cross_node_ = split(my_index_ % n, my_index_ / n, name_ + "/cross-node");
    same_node_ = split(my_index_ / n, my_index_ % n, name_ + "/same-node");
    cross_node_->parent_ = this;
    same_node_->parent_ = this;
    cross_node_->set_observer(nullptr);  // recorded as part of this communicator's operation
    same_node_->set_observer(nullptr);
  }
  return *cross_node_;
}

Communicator& Communicator::same_node() {
  cross_node();
  return *same_node_;
}

void Communicator::count_send(int member, size_t bytes) {
  const int rail = static_cast<int>(transport_.rail_to(members_[member]));
  for (Communicator* c = this; c; c = c->parent_) {
    c->traffic_.bytes_sent[rail] += bytes;
    c->traffic_.msgs_sent[rail] += 1;
  }
}

std::byte* Communicator::scratch(size_t bytes, int slot) {
  auto& buf = scratch_[static_cast<size_t>(slot)];
  if (buf.size() < bytes) buf.resize(bytes);
  return buf.data();
}

Algo Communicator::choose(const char* op, size_t bytes, Algo requested) const {
  if (requested == Algo::kAuto && !knobs().algo.empty()) requested = parse_algo(knobs().algo);
  const bool all_gather = std::strcmp(op, "all_gather") == 0;
  if (requested == Algo::kHierarchical) {
    // Hierarchical exists for all-gather; it needs k > 1 nodes of n > 1 members laid out
    // in node blocks. Where it does not apply it equals the flat ring.
    if (!all_gather || members_per_node_ == 0 || num_nodes_ == 1 || members_per_node_ == 1)
      return Algo::kRing;
    return requested;
  }
  // Halving-doubling exists for all-reduce; for the other operations it is the ring.
  if (requested == Algo::kHalvingDoubling && std::strcmp(op, "all_reduce") != 0) return Algo::kRing;
  if (requested != Algo::kAuto) return requested;
  if (static_cast<int64_t>(bytes) <= knobs().small_msg_bytes) return Algo::kRecursiveDoubling;
  if (all_gather && members_per_node_ > 1 && num_nodes_ > 1) return Algo::kHierarchical;
  return Algo::kRing;
}

void Communicator::set_observer(obs::Observer* observer) {
  observer_ = observer;
  if (observer_) observer_group_ = observer_->log().intern_group(name_);
}

namespace {

// Records one collective in the communicator's observer: the outermost call only (a split
// inside a hierarchical all-gather is part of it), and only when it completes.
thread_local int t_recording_depth = 0;

class Recording {
 public:
  Recording(Communicator& comm, obs::Observer* observer, uint16_t group, obs::CollOp op, Algo algo, DType dtype,
            size_t count)
      : comm_(comm), observer_(t_recording_depth == 0 ? observer : nullptr) {
    ++t_recording_depth;
    if (!observer_) return;
    record_.op = op;
    record_.group = group;
    record_.algo = to_string(algo);
    record_.dtype = dtype;
    record_.comm_size = comm.size();
    record_.count = count;
    record_.bytes = count * dtype_size(dtype);
    before_ = comm.traffic().bytes_sent;
    exceptions_ = std::uncaught_exceptions();
    record_.start_ns = obs::steady_ns();
  }
  ~Recording() {
    --t_recording_depth;
    if (!observer_ || std::uncaught_exceptions() > exceptions_) return;
    record_.dur_ns = obs::steady_ns() - record_.start_ns;
    const auto& after = comm_.traffic().bytes_sent;
    for (int r = 0; r < fabric::kNumRails && r < obs::kRails; ++r)
      record_.rail_bytes[static_cast<size_t>(r)] = after[static_cast<size_t>(r)] - before_[static_cast<size_t>(r)];
    observer_->record(record_);
  }
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;

 private:
  Communicator& comm_;
  obs::Observer* observer_;
  obs::CollectiveRecord record_;
  std::array<uint64_t, fabric::kNumRails> before_{};
  int exceptions_ = 0;
};

}  // namespace

static void check_buffers(const Communicator& comm, const char* op, const void* a, const void* b,
                          size_t count) {
  if (count > 0 && (a == nullptr || b == nullptr))
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{} of {} elements got a null buffer", op, count),
                {.layer = "comm", .where = fmt::format("{} on '{}'", op, comm.name())});
}

void Communicator::all_gather(const void* shard, void* output, size_t count, DType dtype,
                              Algo algo) {
  check_buffers(*this, "all_gather", shard, output, count);
  const size_t es = dtype_size(dtype);
  if (size() == 1) {
    if (count && shard != output) std::memmove(output, shard, count * es);
    return;
  }
  const Algo chosen = choose("all_gather", count * es, algo);
  Recording rec(*this, observer_, observer_group_, obs::CollOp::kAllGather, chosen, dtype, count);
  switch (chosen) {
    case Algo::kRecursiveDoubling:
      return bruck_all_gather(*this, shard, output, count, dtype);
    case Algo::kHierarchical:
      return hierarchical_all_gather(*this, shard, output, count, dtype);
    default:
      return ring_all_gather(*this, shard, output, count, dtype);
  }
}

void Communicator::reduce_scatter(const void* input, void* shard, size_t count, DType dtype,
                                  ReduceOp op, Algo algo) {
  check_buffers(*this, "reduce_scatter", input, shard, count);
  const size_t es = dtype_size(dtype);
  if (size() == 1) {
    if (count && input != shard) std::memmove(shard, input, count * es);
    return;
  }
  const Algo chosen = choose("reduce_scatter", count * es, algo);
  Recording rec(*this, observer_, observer_group_, obs::CollOp::kReduceScatter, chosen, dtype, count);
  if (chosen == Algo::kRecursiveDoubling) {
    // Latency path: all-reduce the whole (small) array, keep our shard.
    std::byte* full = scratch(count * es, 1);
    rd_all_reduce(*this, input, full, count, dtype, op, "reduce_scatter");
    const Block mine = block_of(count, size(), rank());
    if (mine.count) std::memcpy(shard, full + mine.offset * es, mine.count * es);
    return;
  }
  ring_reduce_scatter(*this, input, shard, count, dtype, op);
}

void Communicator::all_reduce(const void* input, void* output, size_t count, DType dtype,
                              ReduceOp op, Algo algo) {
  check_buffers(*this, "all_reduce", input, output, count);
  const size_t es = dtype_size(dtype);
  if (size() == 1) {
    if (count && input != output) std::memmove(output, input, count * es);
    return;
  }
  const Algo chosen = choose("all_reduce", count * es, algo);
  Recording rec(*this, observer_, observer_group_, obs::CollOp::kAllReduce, chosen, dtype, count);
  if (chosen == Algo::kRecursiveDoubling)
    return rd_all_reduce(*this, input, output, count, dtype, op);
  if (chosen == Algo::kHalvingDoubling) return hd_all_reduce(*this, input, output, count, dtype, op);
  ring_all_reduce(*this, input, output, count, dtype, op);
}

void Communicator::broadcast(void* buffer, size_t count, DType dtype, int root, Algo algo) {
  check_buffers(*this, "broadcast", buffer, buffer, count);
  if (root < 0 || root >= size())
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("broadcast root {} is not a member (size {})", root, size()),
                {.layer = "comm", .where = fmt::format("broadcast on '{}'", name_)});
  if (size() == 1) return;
  const size_t bytes = count * dtype_size(dtype);
  const Algo chosen = choose("broadcast", bytes, algo);
  Recording rec(*this, observer_, observer_group_, obs::CollOp::kBroadcast, chosen, dtype, count);
  if (chosen == Algo::kRecursiveDoubling)
    return tree_broadcast(*this, buffer, bytes, root);
  chain_broadcast(*this, buffer, bytes, root);
}

void Communicator::barrier() {
  if (size() <= 1) return;
  Recording rec(*this, observer_, observer_group_, obs::CollOp::kBarrier, Algo::kRecursiveDoubling, DType::kF32, 0);
  dissemination_barrier(*this);
}

std::vector<Segment> chunk_range(size_t offset, size_t bytes, size_t element_size,
                                 size_t chunk_bytes) {
  size_t chunk = chunk_bytes ? chunk_bytes : static_cast<size_t>(knobs().chunk_bytes);
  chunk = std::max(element_size, chunk / element_size * element_size);
  std::vector<Segment> chunks;
  for (size_t done = 0; done < bytes; done += chunk)
    chunks.push_back({offset + done, std::min(chunk, bytes - done)});
  return chunks;
}

}  // namespace mics::comm
