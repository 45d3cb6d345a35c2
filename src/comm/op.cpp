#include "comm/op.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include "base/knobs.hpp"
#include "base/strings.hpp"
#include "comm/failure_board.hpp"

namespace mics::comm {

Op::Op(Communicator& comm, const char* name, Algo algo, size_t bytes)
    : comm_(comm),
      transport_(comm.transport()),
      name_(name),
      algo_(algo),
      bytes_(bytes),
      sequence_(comm.next_sequence()),
      deadline_(knobs().timeout_s),
      watch_(comm, name, algo, bytes, knobs().timeout_s),
      next_board_check_(Clock::now() + std::chrono::milliseconds(500)) {}

Op::Op(Communicator& comm, const char* name, size_t bytes, PointToPoint p2p)
    : comm_(comm),
      transport_(comm.transport()),
      name_(name),
      algo_(Algo::kAuto),
      bytes_(bytes),
      sequence_(p2p.tag),
      deadline_(knobs().timeout_s),
      watch_(comm, name, Algo::kAuto, bytes, knobs().timeout_s),
      index_flag_(1u << 27),
      next_board_check_(Clock::now() + std::chrono::milliseconds(500)) {}

Op::~Op() = default;

uint64_t Op::tag(uint32_t index) const {
  MICS_CHECK(index <= kMaxIndex, fmt::format("message index {} overflows the tag", index));
  return (static_cast<uint64_t>(comm_.id() & 0xffffu) << 44) |
         (static_cast<uint64_t>(sequence_) << 28) | index_flag_ | index;
}

fabric::Request* Op::send(int member, uint32_t index, const void* buf, size_t bytes) {
  comm_.count_send(member, bytes);
  watch_.set_peer(comm_.global_rank(member));
  ++outstanding_;
  try {
    return transport_.isend(comm_.global_rank(member), tag(index), buf, bytes, deadline_);
  } catch (const Error& e) {
    rethrow_in_op(e);
  }
}

fabric::Request* Op::recv(int member, uint32_t index, void* buf, size_t bytes) {
  watch_.set_peer(comm_.global_rank(member));
  ++outstanding_;
  try {
    return transport_.irecv(comm_.global_rank(member), tag(index), buf, bytes, deadline_);
  } catch (const Error& e) {
    rethrow_in_op(e);
  }
}

void Op::rethrow_in_op(const Error& e) const {
  // A post refused past the deadline (or failing) in the fabric layer knows the call and the
  // peer; the user needs the collective and the communicator too.
  ErrorContext context = e.context();
  context.where = context.where.empty() ? where() : fmt::format("{}, in {}", context.where, where());
  throw Error(e.kind(), e.message(), std::move(context));
}

bool Op::test(fabric::Request* request) {
  if (!request->done) transport_.progress();
  if (!request->done) return false;
  if (request->failed()) fail(request, "completion", false);
  transport_.release(request);
  --outstanding_;
  return true;
}

void Op::wait(fabric::Request* request, const char* what) {
  watch_.set_peer(request->peer);
  if (knobs().debug_hang_rank == transport_.rank())
    while (true) pause();  // tests only: as a transport call that never returns
  while (!request->done) {
    if (transport_.progress() > 0) {
      backoff_.reset();
      continue;
    }
    if (request->done) break;
    if (deadline_.expired()) fail(request, what, true);
    if (Clock::now() >= next_board_check_) check_failure_board();
    if (long ns = backoff_.step()) transport_.idle_wait(ns);
  }
  if (request->failed()) fail(request, what, false);
  transport_.release(request);
  --outstanding_;
}

void Op::wait_all(std::vector<fabric::Request*>& requests, const char* what) {
  for (auto* request : requests) wait(request, what);
  requests.clear();
}

void Op::reap(std::vector<fabric::Request*>& requests) {
  size_t done = 0;
  while (done < requests.size() && requests[done]->done) {
    if (requests[done]->failed()) fail(requests[done], "completion", false);
    transport_.release(requests[done]);
    --outstanding_;
    ++done;
  }
  requests.erase(requests.begin(), requests.begin() + static_cast<long>(done));
}

std::string Op::where() const {
  return fmt::format("{} ({}, {}) on communicator '{}' (member {} of {})", name_, to_string(algo_),
                     format_bytes(static_cast<double>(bytes_)), comm_.name(), comm_.rank(),
                     comm_.size());
}

void Op::check_failure_board() {
  next_board_check_ = Clock::now() + std::chrono::milliseconds(500);
  FailureBoard* board = failure_board();
  if (!board) return;
  auto report = board->read();
  if (!report || report->rank == transport_.rank()) return;
  throw Error(ErrorKind::kPeerFailure,
              fmt::format("rank {} failed first and reported: {}", report->rank, report->message),
              {.layer = "comm",
               .where = where(),
               .peer = report->rank,
               .hint = fmt::format("look at rank {}'s output for the cause", report->rank)});
}

void Op::fail(fabric::Request* request, const char* what, bool timed_out) {
  const std::string where_text = where();
  const int peer = request->peer;
  // Tell the other ranks (best effort) before leaving, so that those waiting behind us fail
  // promptly and name the right rank. Someone else may have failed first: then say that.
  if (FailureBoard* board = failure_board()) {
    if (auto report = board->read(); report && report->rank != transport_.rank())
      check_failure_board();
    board->publish(transport_.rank(),
                   fmt::format("{} in {} with rank {}", timed_out ? "timeout" : "transport error",
                               where_text, peer));
  }
  // The pending requests may still be written by the provider: they are never reused, and
  // this communicator should not be used again.
  if (timed_out)
    throw Error(ErrorKind::kTimeout,
                fmt::format("{} rank {} for {:.1f} s ({})",
                            request->is_send ? "no receive posted by" : "no data from", peer,
                            deadline_.budget_s(), what),
                {.layer = "comm",
                 .where = where_text,
                 .peer = peer,
                 .hint = fmt::format("rank {} may have died, hung or left the collective; check "
                                     "its output. If it is only slow, raise MICS_TIMEOUT_S",
                                     peer)});
  throw Error(ErrorKind::kPeerFailure,
              fmt::format("{} rank {} failed over the {} rail: {}",
                          request->is_send ? "send to" : "receive from", peer,
                          fabric::to_string(request->rail), request->error_text),
              {.layer = "comm",
               .where = where_text,
               .peer = peer,
               .hint = fmt::format("rank {} has probably exited; check its output", peer)});
}

}  // namespace mics::comm
