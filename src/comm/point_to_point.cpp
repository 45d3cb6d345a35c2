// Point-to-point messages between two members of a communicator (pipeline activations and
// their gradients). A message is cut into MICS_GATHER_CHUNK_BYTES chunks (as the ring
// all-gather's: nothing to reduce, so nothing to overlap inside a message, and every extra
// message is a handshake that needs the peer scheduled), chunk c carrying message
// index (1 << 27) | c under the caller's 16-bit tag, so that any size goes through every
// provider; the receiver posts every chunk before waiting. Traffic: the sender counts `bytes`
// (on the rail to the peer), the receiver nothing.
#include <fmt/format.h>

#include "base/knobs.hpp"

#include "comm/algorithms.hpp"
#include "comm/communicator.hpp"
#include "comm/layout.hpp"
#include "comm/op.hpp"

namespace mics::comm {

namespace {

size_t message_chunk_bytes() { return static_cast<size_t>(knobs().gather_chunk_bytes); }

void check_peer(const Communicator& comm, const char* what, int peer) {
  if (peer < 0 || peer >= comm.size() || peer == comm.rank())
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{} with member {} (communicator of {}, this member {})", what, peer, comm.size(), comm.rank()),
                {.layer = "comm", .where = fmt::format("{} on '{}'", what, comm.name()),
                 .hint = "point-to-point needs another member of the communicator"});
}

void post_sends(Op& op, const void* buffer, size_t bytes, int peer, std::vector<fabric::Request*>& out) {
  const auto* buf = static_cast<const std::byte*>(buffer);
  const std::vector<Segment> chunks = chunk_range(0, bytes, 1, message_chunk_bytes());
  MICS_CHECK(chunks.size() < (1u << 27), "too many chunks for a point-to-point message");
  for (size_t c = 0; c < chunks.size(); ++c)
    out.push_back(op.send(peer, static_cast<uint32_t>(c), buf + chunks[c].offset, chunks[c].bytes));
}

void post_recvs(Op& op, void* buffer, size_t bytes, int peer, std::vector<fabric::Request*>& out) {
  auto* buf = static_cast<std::byte*>(buffer);
  const std::vector<Segment> chunks = chunk_range(0, bytes, 1, message_chunk_bytes());
  MICS_CHECK(chunks.size() < (1u << 27), "too many chunks for a point-to-point message");
  for (size_t c = 0; c < chunks.size(); ++c)
    out.push_back(op.recv(peer, static_cast<uint32_t>(c), buf + chunks[c].offset, chunks[c].bytes));
}

}  // namespace

void Communicator::send(const void* buffer, size_t bytes, int peer, uint16_t tag) {
  check_peer(*this, "send", peer);
  Op op(*this, "send", bytes, Op::PointToPoint{tag});
  std::vector<fabric::Request*> sends;
  post_sends(op, buffer, bytes, peer, sends);
  op.wait_all(sends, fmt::format("send to member {} (tag {})", peer, tag).c_str());
}

void Communicator::recv(void* buffer, size_t bytes, int peer, uint16_t tag) {
  check_peer(*this, "recv", peer);
  Op op(*this, "recv", bytes, Op::PointToPoint{tag});
  std::vector<fabric::Request*> recvs;
  post_recvs(op, buffer, bytes, peer, recvs);
  op.wait_all(recvs, fmt::format("receive from member {} (tag {})", peer, tag).c_str());
}

void Communicator::send_recv(const void* send_buffer, size_t send_bytes, int send_peer, uint16_t send_tag,
                             void* recv_buffer, size_t recv_bytes, int recv_peer, uint16_t recv_tag) {
  check_peer(*this, "send_recv", send_peer);
  check_peer(*this, "send_recv", recv_peer);
  Op in(*this, "send_recv (receive)", recv_bytes, Op::PointToPoint{recv_tag});
  Op out(*this, "send_recv (send)", send_bytes, Op::PointToPoint{send_tag});
  std::vector<fabric::Request*> sends, recvs;
  post_recvs(in, recv_buffer, recv_bytes, recv_peer, recvs);
  post_sends(out, send_buffer, send_bytes, send_peer, sends);
  in.wait_all(recvs, fmt::format("receive from member {} (tag {})", recv_peer, recv_tag).c_str());
  out.wait_all(sends, fmt::format("send to member {} (tag {})", send_peer, send_tag).c_str());
}

}  // namespace mics::comm
