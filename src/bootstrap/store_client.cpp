// The store's client: one connection, one request in flight (calls are serialised by a
// mutex), every call bounded by a deadline. Waiting happens on the server (WAIT), so a blocked
// get or barrier costs no traffic; the client only adds a grace period to the server's answer.
#include <poll.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "bootstrap/socket.hpp"
#include "bootstrap/store.hpp"
#include "bootstrap/wire.hpp"

namespace mics::bootstrap {

using wire::Op;

namespace {

constexpr double kReplyGraceS = 5;  // beyond a WAIT's own timeout, for the reply to arrive
constexpr uint8_t kErrBadToken = 1;
constexpr uint8_t kErrBadVersion = 2;
constexpr uint8_t kErrBadRequest = 4;

const char* kStoreHint =
    "the store is hosted by rank 0 (or by mics launch): check that it is running and did not "
    "fail, that every rank has the same MICS_MASTER_ADDR and MICS_MASTER_PORT, and that no "
    "firewall or security group blocks the port";

std::string list_keys(const std::vector<std::string>& keys, uint64_t total, size_t limit = 8) {
  std::vector<std::string> quoted;
  for (size_t i = 0; i < keys.size() && i < limit; ++i) quoted.push_back("'" + keys[i] + "'");
  std::string text = join(quoted, ", ");
  if (total > quoted.size()) text += fmt::format(" and {} more", total - quoted.size());
  return text;
}

}  // namespace

struct StoreClient::Impl {
  std::string host;
  int port = 0;
  std::string endpoint;
  std::string token;
  net::Fd fd;
  std::mutex mu;
  std::string broken;  // why the connection cannot be used any more; empty while it can
  int rank = -1;
  int world_size = 0;
  int host_rank = -1;

  ErrorContext ctx(const std::string& what, std::string hint = kStoreHint) const {
    ErrorContext c{.layer = "bootstrap",
                   .where = fmt::format("{}, store at {}", what, endpoint),
                   .hint = std::move(hint)};
    if (host_rank >= 0 && host_rank != rank) c.peer = host_rank;
    return c;
  }
  [[noreturn]] void lost(ErrorKind kind, const std::string& message, const std::string& what,
                         std::string hint = kStoreHint) {
    broken = message;
    fd.reset();
    throw Error(kind, message, ctx(what, std::move(hint)));
  }

  void connect(double timeout_s);
  bool hello(const Deadline& deadline, std::string* failure);
  // Sends one request frame and returns the reply's payload (opcode first). ERROR replies
  // throw kProtocol.
  std::string request(const std::string& frame, const Deadline& io_deadline,
                      const std::string& what);
  std::string read_reply(const Deadline& io_deadline, const std::string& what);
  // WAIT for keys up to timeout_s; returns the missing keys (empty listed/total 0: all there).
  MissingKeys wait(const std::vector<std::string>& keys, double timeout_s, const std::string& what);
};

void StoreClient::Impl::connect(double timeout_s) {
  const Deadline deadline(timeout_s);
  std::string failure = "no attempt was made";
  double nap_s = 0.01;
  int attempts = 0;
  while (true) {
    ++attempts;
    fd = net::try_connect_tcp(host, port, deadline, &failure);
    if (fd.valid() && hello(deadline, &failure)) return;
    fd.reset();
    if (deadline.expired()) break;
    std::this_thread::sleep_for(
        std::chrono::duration<double>(std::min(nap_s, std::max(deadline.remaining_s(), 0.0))));
    nap_s = std::min(nap_s * 2, 0.5);
    if (deadline.expired()) break;
  }
  throw Error(ErrorKind::kTimeout,
              fmt::format("could not reach the rendezvous store at {} within {} s ({} attempts; "
                          "last error: {})",
                          endpoint, timeout_s, attempts, failure),
              ctx("connect", std::string(kStoreHint) +
                                 "; raise MICS_TIMEOUT_S if the host of the store starts late"));
}

// Authenticates a fresh connection. False (with the reason) when the connection broke and a
// retry makes sense; throws when the store refused us.
bool StoreClient::Impl::hello(const Deadline& deadline, std::string* failure) {
  const std::string frame = wire::Writer(Op::kHello).u32(wire::kVersion).str(token).frame();
  int err = 0;
  if (net::send_all(fd.get(), frame.data(), frame.size(), deadline, &err) != net::IoResult::kOk) {
    *failure = err ? "sending HELLO: " + errno_text(err) : "sending HELLO timed out";
    return false;
  }
  char header[wire::kHeaderBytes];
  net::IoResult res = net::recv_exact(fd.get(), header, sizeof(header), deadline, &err);
  if (res != net::IoResult::kOk) {
    *failure = res == net::IoResult::kClosed    ? "the store closed the connection during HELLO"
               : res == net::IoResult::kTimeout ? "no reply to HELLO before the deadline"
                                                : "reading the HELLO reply: " + errno_text(err);
    return false;
  }
  const wire::Header h = wire::parse_header(header);
  if (h.magic != wire::kMagic || h.length == 0 || h.length > wire::kMaxFrameBytes)
    lost(ErrorKind::kProtocol,
         fmt::format("the service at {} does not speak the mics store protocol (reply header "
                     "magic 0x{:08x}, length {})",
                     endpoint, h.magic, h.length),
         "connect",
         "MICS_MASTER_ADDR/MICS_MASTER_PORT point at another service: choose the port of this "
         "job's store");
  std::string payload(h.length, '\0');
  res = net::recv_exact(fd.get(), payload.data(), payload.size(), deadline, &err);
  if (res != net::IoResult::kOk) {
    *failure = "reading the HELLO reply failed";
    return false;
  }
  wire::Reader r(payload);
  const uint8_t op = r.u8();
  if (op == static_cast<uint8_t>(Op::kOk) && r.at_end()) return true;
  if (op == static_cast<uint8_t>(Op::kError)) {
    const uint8_t code = r.u8();
    const std::string message = r.str();
    if (code == kErrBadToken)
      lost(ErrorKind::kProtocol, fmt::format("job token rejected by store at {}", endpoint),
           "connect",
           "the store belongs to another job or this rank has a different MICS_JOB_TOKEN: every "
           "rank must see the same MICS_JOB_TOKEN (or none, under Slurm/Open MPI), and "
           "MICS_MASTER_PORT must be this job's");
    lost(ErrorKind::kProtocol,
         fmt::format("store at {} refused the connection: {}", endpoint, message), "connect",
         code == kErrBadVersion ? "every rank and the launcher must run the same mics version"
                                : kStoreHint);
  }
  lost(ErrorKind::kProtocol,
       fmt::format("garbled HELLO reply from the store at {} (opcode {})", endpoint, op), "connect",
       kStoreHint);
}

std::string StoreClient::Impl::read_reply(const Deadline& io_deadline, const std::string& what) {
  int err = 0;
  char header[wire::kHeaderBytes];
  auto check = [&](net::IoResult res) {
    if (res == net::IoResult::kOk) return;
    if (res == net::IoResult::kTimeout)
      lost(ErrorKind::kTimeout,
           fmt::format("no reply from the store at {} within {:.1f} s", endpoint,
                       io_deadline.budget_s()),
           what);
    if (res == net::IoResult::kClosed)
      lost(ErrorKind::kPeerFailure, fmt::format("the store at {} closed the connection", endpoint),
           what,
           "the host of the store (rank 0, or mics launch) exited or failed: look at its output "
           "first");
    lost(ErrorKind::kIo, fmt::format("reading from the store at {}: {}", endpoint, errno_text(err)),
         what);
  };
  check(net::recv_exact(fd.get(), header, sizeof(header), io_deadline, &err));
  const wire::Header h = wire::parse_header(header);
  if (h.magic != wire::kMagic)
    lost(ErrorKind::kProtocol,
         fmt::format("garbled reply from the store at {}: bad frame magic 0x{:08x}", endpoint,
                     h.magic),
         what);
  if (h.length == 0 || h.length > wire::kMaxFrameBytes)
    lost(ErrorKind::kProtocol,
         fmt::format("garbled reply from the store at {}: frame length {} (limit {})", endpoint,
                     h.length, wire::kMaxFrameBytes),
         what);
  std::string payload(h.length, '\0');
  check(net::recv_exact(fd.get(), payload.data(), payload.size(), io_deadline, &err));
  if (static_cast<uint8_t>(payload[0]) == static_cast<uint8_t>(Op::kError)) {
    wire::Reader r(payload);
    r.u8();
    const uint8_t code = r.u8();
    const std::string message = r.str();
    if (code != kErrBadRequest) {  // the server closes the connection after these
      broken = message;
      fd.reset();
    }
    throw Error(ErrorKind::kProtocol,
                fmt::format("the store at {} refused the request: {}", endpoint,
                            r.ok() ? message : "(unreadable error reply)"),
                ctx(what, "this is likely a bug in mics, or two jobs share a store"));
  }
  return payload;
}

std::string StoreClient::Impl::request(const std::string& frame, const Deadline& io_deadline,
                                       const std::string& what) {
  if (!broken.empty())
    throw Error(ErrorKind::kPeerFailure,
                fmt::format("the connection to the store at {} is unusable after an earlier "
                            "failure: {}",
                            endpoint, broken),
                ctx(what));
  if (frame.size() > wire::kMaxFrameBytes + wire::kHeaderBytes)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("request of {} is larger than the store's limit of {}",
                            format_bytes(static_cast<double>(frame.size())),
                            format_bytes(wire::kMaxFrameBytes)),
                ctx(what, "store small values only (addresses, configs), not data"));
  int err = 0;
  net::IoResult res = net::send_all(fd.get(), frame.data(), frame.size(), io_deadline, &err);
  if (res == net::IoResult::kTimeout)
    lost(ErrorKind::kTimeout, fmt::format("sending to the store at {} timed out", endpoint), what);
  if (res != net::IoResult::kOk)
    lost(ErrorKind::kPeerFailure,
         fmt::format("the connection to the store at {} broke: {}", endpoint,
                     err ? errno_text(err) : "closed"),
         what,
         "the host of the store (rank 0, or mics launch) exited or failed: look at its output "
         "first");
  return read_reply(io_deadline, what);
}

MissingKeys StoreClient::Impl::wait(const std::vector<std::string>& keys, double timeout_s,
                                    const std::string& what) {
  wire::Writer w(Op::kWait);
  w.i64(static_cast<int64_t>(std::max(timeout_s, 0.0) * 1000.0));
  w.u32(static_cast<uint32_t>(keys.size()));
  for (const auto& key : keys) w.str(key);
  const Deadline io_deadline(std::max(timeout_s, 0.0) + kReplyGraceS);
  const std::string payload = request(w.frame(), io_deadline, what);
  wire::Reader r(payload);
  const uint8_t op = r.u8();
  MissingKeys missing;
  if (op == static_cast<uint8_t>(Op::kOk) && r.at_end()) return missing;
  if (op == static_cast<uint8_t>(Op::kMissing)) {
    missing.total = r.u64();
    const uint32_t n = r.u32();
    for (uint32_t i = 0; i < n && r.ok(); ++i) missing.listed.push_back(r.str());
    if (r.ok() && r.at_end() && missing.total >= n && missing.total > 0) return missing;
  }
  lost(ErrorKind::kProtocol,
       fmt::format("garbled reply from the store at {} (opcode {} to WAIT)", endpoint, op), what);
}

StoreClient::StoreClient(const std::string& addr, int port, const std::string& job_token,
                         double timeout_s)
    : impl_(std::make_unique<Impl>()), timeout_s_(timeout_s) {
  impl_->host = addr;
  impl_->port = port;
  impl_->endpoint = net::endpoint_text(addr, port);
  impl_->token = job_token;
  impl_->connect(timeout_s);
}

StoreClient::~StoreClient() = default;

std::string StoreClient::address() const {
  return impl_->endpoint;
}

void StoreClient::set_identity(int rank, int world_size, int host_rank) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->rank = rank;
  impl_->world_size = world_size;
  impl_->host_rank = host_rank;
}

void StoreClient::set(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::string what = fmt::format("set '{}'", key);
  const std::string payload = impl_->request(wire::Writer(Op::kSet).str(key).str(value).frame(),
                                             Deadline(timeout_s_), what);
  if (payload.size() != 1 || static_cast<uint8_t>(payload[0]) != static_cast<uint8_t>(Op::kOk))
    impl_->lost(ErrorKind::kProtocol, "garbled reply from the store to SET", what);
}

std::optional<std::string> StoreClient::try_get(const std::string& key) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::string what = fmt::format("get '{}'", key);
  const std::string payload =
      impl_->request(wire::Writer(Op::kGet).str(key).frame(), Deadline(timeout_s_), what);
  wire::Reader r(payload);
  const uint8_t op = r.u8();
  if (op == static_cast<uint8_t>(Op::kAbsent) && r.at_end()) return std::nullopt;
  if (op == static_cast<uint8_t>(Op::kValue)) {
    std::string value = r.str();
    if (r.ok() && r.at_end()) return value;
  }
  impl_->lost(ErrorKind::kProtocol, "garbled reply from the store to GET", what);
}

int64_t StoreClient::add(const std::string& key, int64_t delta) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::string what = fmt::format("add to '{}'", key);
  const std::string payload = impl_->request(wire::Writer(Op::kAdd).str(key).i64(delta).frame(),
                                             Deadline(timeout_s_), what);
  wire::Reader r(payload);
  const uint8_t op = r.u8();
  const int64_t value = r.i64();
  if (op == static_cast<uint8_t>(Op::kInt) && r.ok() && r.at_end()) return value;
  impl_->lost(ErrorKind::kProtocol, "garbled reply from the store to ADD", what);
}

void StoreClient::wait(const std::vector<std::string>& keys) {
  wait(keys, timeout_s_);
}

void StoreClient::wait(const std::vector<std::string>& keys, double timeout_s) {
  if (keys.empty()) return;
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::string what = keys.size() == 1 ? fmt::format("wait for '{}'", keys[0])
                                            : fmt::format("wait for {} keys", keys.size());
  MissingKeys missing = impl_->wait(keys, timeout_s, what);
  if (missing.total == 0) return;
  throw Error(
      ErrorKind::kTimeout,
      keys.size() == 1
          ? fmt::format("timed out after {} s waiting for key '{}'", timeout_s, keys[0])
          : fmt::format("timed out after {} s waiting for {} of {} keys: {}", timeout_s,
                        missing.total, keys.size(), list_keys(missing.listed, missing.total)),
      impl_->ctx(what,
                 "the ranks that set these keys have not got this far: check that every "
                 "rank was started and none failed (their output tells), or raise "
                 "MICS_TIMEOUT_S if they are only slow"));
}

std::string StoreClient::get(const std::string& key) {
  wait({key});
  auto value = try_get(key);
  MICS_CHECK(value.has_value(), "a key the store reported present is absent: " + key);
  return *value;
}

std::vector<std::string> StoreClient::get_many(const std::vector<std::string>& keys) {
  if (keys.empty()) return {};
  wait(keys);
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::string what = fmt::format("get {} keys", keys.size());
  wire::Writer w(Op::kMultiGet);
  w.u32(static_cast<uint32_t>(keys.size()));
  for (const auto& key : keys) w.str(key);
  const std::string payload = impl_->request(w.frame(), Deadline(timeout_s_), what);
  wire::Reader r(payload);
  const uint8_t op = r.u8();
  const uint32_t n = r.u32();
  std::vector<std::string> values;
  if (op == static_cast<uint8_t>(Op::kValues) && r.ok() && n == keys.size()) {
    values.reserve(n);
    bool all_present = true;
    for (uint32_t i = 0; i < n && r.ok(); ++i) {
      all_present &= r.u8() == 1;
      values.push_back(r.str());
    }
    if (r.ok() && r.at_end()) {
      MICS_CHECK(all_present, "keys the store reported present are absent");
      return values;
    }
  }
  impl_->lost(ErrorKind::kProtocol, "garbled reply from the store to MGET", what);
}

MissingKeys StoreClient::missing(const std::vector<std::string>& keys) {
  if (keys.empty()) return {};
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->wait(keys, 0, fmt::format("probe {} keys", keys.size()));
}

void StoreClient::barrier(const std::string& name, int count) {
  if (count <= 0)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("barrier of {} callers", count),
                {.layer = "bootstrap",
                 .where = fmt::format("barrier '{}'", name),
                 .hint = "a barrier needs at least one caller"});
  const std::string prefix = "barrier/" + name + "/";
  int rank, world;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    rank = impl_->rank;
    world = impl_->world_size;
  }
  const bool by_rank = rank >= 0 && count == world;
  MissingKeys done;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    wire::Writer w(Op::kArrive);
    w.i64(static_cast<int64_t>(std::max(timeout_s_, 0.0) * 1000.0)).i64(count);
    w.str(prefix + "count").str(prefix + "done");
    w.str(by_rank ? prefix + "rank/" + std::to_string(rank) : std::string());
    const std::string what = fmt::format("barrier '{}'", name);
    const std::string payload =
        impl_->request(w.frame(), Deadline(timeout_s_ + kReplyGraceS), what);
    wire::Reader r(payload);
    const uint8_t op = r.u8();
    if (op == static_cast<uint8_t>(Op::kMissing)) {
      done.total = r.u64();
    } else if (op != static_cast<uint8_t>(Op::kOk) || !r.at_end()) {
      impl_->lost(ErrorKind::kProtocol,
                  fmt::format("garbled reply from the store to ARRIVE (opcode {})", op), what);
    }
  }
  if (done.total == 0) return;

  // Timed out: say how many came and, when we can, which ranks did not.
  int64_t now_arrived = -1;
  if (auto v = try_get(prefix + "count")) now_arrived = parse_int64(*v).value_or(-1);
  std::string message = fmt::format("barrier '{}' timed out after {} s: {} of {} arrived", name,
                                    timeout_s_, now_arrived, count);
  std::optional<int> first_missing;
  if (by_rank) {
    std::vector<std::string> keys;
    for (int r = 0; r < count; ++r) keys.push_back(prefix + "rank/" + std::to_string(r));
    MissingKeys absent = missing(keys);
    std::vector<std::string> ranks;
    for (const auto& key : absent.listed) {
      ranks.push_back(key.substr(key.rfind('/') + 1));
      if (!first_missing) first_missing = static_cast<int>(parse_int64(ranks.back()).value_or(-1));
    }
    if (!ranks.empty()) {
      message += "; missing ranks: " +
                 join(std::vector<std::string>(ranks.begin(),
                                               ranks.begin() + std::min<size_t>(ranks.size(), 16)),
                      ", ");
      if (absent.total > std::min<size_t>(ranks.size(), 16))
        message += fmt::format(" and {} more", absent.total - std::min<size_t>(ranks.size(), 16));
    }
  }
  ErrorContext ctx = impl_->ctx(
      fmt::format("barrier '{}'", name),
      first_missing ? fmt::format("rank {} (and any other missing rank) did not reach the barrier: "
                                  "it may have failed or hung (look at its output), or is only "
                                  "slow (raise MICS_TIMEOUT_S)",
                                  *first_missing)
                    : std::string("some callers did not reach the barrier: they may have failed "
                                  "or hung (look at their output), or are only slow (raise "
                                  "MICS_TIMEOUT_S)"));
  if (first_missing) ctx.peer = *first_missing;
  throw Error(ErrorKind::kTimeout, message, ctx);
}

}  // namespace mics::bootstrap
