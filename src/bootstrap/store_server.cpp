// The store's server: one background thread, poll() over the listening socket, a wake pipe
// and every client. It never trusts a client: frames are bounded, parsed defensively, and a
// client that breaks the protocol gets an ERROR reply and is disconnected; the others carry on.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/log.hpp"
#include "base/strings.hpp"
#include "bootstrap/socket.hpp"
#include "bootstrap/store.hpp"
#include "bootstrap/wire.hpp"

namespace mics::bootstrap {

using wire::Op;

namespace {

// Codes carried by ERROR replies (the client turns them into messages).
constexpr uint8_t kErrBadToken = 1;
constexpr uint8_t kErrBadVersion = 2;
constexpr uint8_t kErrMalformed = 3;
constexpr uint8_t kErrBadRequest = 4;

constexpr double kHelloTimeoutS = 30;  // a client must authenticate within this
constexpr size_t kReadChunk = 64 << 10;
constexpr size_t kMaxBuffered = wire::kMaxFrameBytes + wire::kHeaderBytes + kReadChunk;

bool tokens_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string peer_name(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char host[64] = {};
  int port = 0;
  if (ss.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    port = ntohs(sin->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    port = ntohs(sin6->sin6_port);
  }
  return net::endpoint_text(host, port);
}

}  // namespace

struct StoreServer::Impl {
  struct Wait {
    uint64_t seq = 0;
    std::vector<std::string> keys;
    size_t missing = 0;
    Clock::time_point end;
  };
  struct Conn {
    uint64_t id = 0;
    net::Fd fd;
    std::string peer;
    std::string in;
    size_t in_pos = 0;
    std::string out;
    size_t out_pos = 0;
    bool authed = false;
    bool closing = false;  // close once `out` is flushed
    bool dead = false;     // close now
    Clock::time_point hello_end;
    std::optional<Wait> wait;
  };

  std::string token;
  std::string endpoint;
  net::Fd listen_fd;
  int port = 0;
  net::Fd wake_read, wake_write;
  std::atomic<bool> stop{false};
  std::thread thread;

  std::map<uint64_t, std::unique_ptr<Conn>> conns;
  uint64_t next_id = 1;
  uint64_t next_seq = 1;
  std::unordered_map<std::string, std::string> kv;
  // key -> (conn id, wait seq) of the waits that still miss it
  std::unordered_map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> watchers;
  std::vector<uint64_t> resumed;  // conns whose wait completed: process their buffered frames
  Clock::time_point accept_paused_until{};

  void run();
  void accept_all();
  void read_from(Conn& c);
  void flush(Conn& c);
  void process(Conn& c);
  void handle(Conn& c, std::string_view payload);
  void reply(Conn& c, const wire::Writer& w) { c.out += w.frame(); }
  void fail(Conn& c, uint8_t code, const std::string& message);
  void put(const std::string& key, std::string value);
  void finish_wait(Conn& c);
  void expire_waits(Clock::time_point now);
  // Processes the frames buffered behind waits that have completed (which may complete more).
  void process_resumed();
  void final_flush();
};

StoreServer::StoreServer(const std::string& bind_addr, int port, std::string job_token)
    : impl_(std::make_unique<Impl>()) {
  impl_->token = std::move(job_token);
  impl_->listen_fd = net::listen_tcp(bind_addr, port, &impl_->port);
  impl_->endpoint = net::endpoint_text(bind_addr, impl_->port);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0)
    throw Error(ErrorKind::kIo, fmt::format("pipe2 failed: {}", errno_text(errno)),
                {.layer = "bootstrap",
                 .where = "starting the store at " + impl_->endpoint,
                 .hint = "the process may be out of file descriptors (ulimit -n)"});
  impl_->wake_read.reset(fds[0]);
  impl_->wake_write.reset(fds[1]);
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
  log::debug("store: serving on {}", impl_->endpoint);
}

StoreServer::~StoreServer() {
  impl_->stop = true;
  char byte = 1;
  ssize_t ignored = ::write(impl_->wake_write.get(), &byte, 1);
  (void)ignored;
  if (impl_->thread.joinable()) impl_->thread.join();
}

int StoreServer::port() const {
  return impl_->port;
}

void StoreServer::Impl::run() {
  std::vector<pollfd> fds;
  std::vector<Conn*> polled;
  while (!stop.load()) {
    try {
      const auto now = Clock::now();
      fds.clear();
      polled.clear();
      fds.push_back({wake_read.get(), POLLIN, 0});
      const bool accepting = now >= accept_paused_until;
      fds.push_back({accepting ? listen_fd.get() : -1, POLLIN, 0});
      auto next = now + std::chrono::seconds(1);
      if (!accepting) next = std::min(next, accept_paused_until);
      for (auto& [id, conn] : conns) {
        short events = 0;
        if (!conn->closing) events |= POLLIN;
        if (conn->out_pos < conn->out.size()) events |= POLLOUT;
        fds.push_back({conn->fd.get(), events, 0});
        polled.push_back(conn.get());
        if (conn->wait) next = std::min(next, conn->wait->end);
        if (!conn->authed) next = std::min(next, conn->hello_end);
      }
      int timeout_ms = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1);
      int n = ::poll(fds.data(), fds.size(), std::max(timeout_ms, 0));
      if (n < 0 && errno != EINTR) {
        log::error("store: poll failed: {}", errno_text(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (fds[0].revents) {
        char buf[64];
        while (::read(wake_read.get(), buf, sizeof(buf)) > 0) {
        }
      }
      if (stop.load()) break;
      if (fds[1].revents & POLLIN) accept_all();
      for (size_t i = 0; i < polled.size(); ++i) {
        Conn& c = *polled[i];
        const short rev = fds[i + 2].revents;
        if (rev & (POLLIN | POLLHUP | POLLERR)) read_from(c);
        if (!c.dead) process(c);
      }
      // Waits completed by this round's SETs/ADDs: their connections may have more frames.
      process_resumed();
      expire_waits(Clock::now());
      const auto later = Clock::now();
      for (auto it = conns.begin(); it != conns.end();) {
        Conn& c = *it->second;
        if (!c.authed && !c.dead && later >= c.hello_end) {
          log::debug("store: {} did not authenticate in time; closing", c.peer);
          c.dead = true;
        }
        if (!c.dead) flush(c);
        if (c.dead || (c.closing && c.out_pos >= c.out.size())) {
          it = conns.erase(it);
        } else {
          ++it;
        }
      }
    } catch (const std::exception& e) {
      // Never let the thread die with the job still needing the store.
      log::error("store: unexpected error in the server loop: {}", e.what());
    }
  }
  final_flush();
}

void StoreServer::Impl::accept_all() {
  while (true) {
    int fd = ::accept4(listen_fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        log::warn("store: cannot accept a connection: {}; pausing accepts for 100 ms",
                  errno_text(errno));
        accept_paused_until = Clock::now() + std::chrono::milliseconds(100);
      }
      return;  // EAGAIN and anything else: wait for the next poll
    }
    auto c = std::make_unique<Conn>();
    c->id = next_id++;
    c->fd.reset(fd);
    net::set_nodelay(fd);
    c->peer = peer_name(fd);
    c->hello_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(kHelloTimeoutS));
    conns.emplace(c->id, std::move(c));
  }
}

void StoreServer::Impl::read_from(Conn& c) {
  // Compact what was consumed so the buffer never grows past one frame and a read chunk.
  if (c.in_pos > 0) {
    c.in.erase(0, c.in_pos);
    c.in_pos = 0;
  }
  size_t budget = 1 << 20;  // per round, for fairness between clients
  while (budget > 0) {
    if (c.in.size() >= kMaxBuffered) {
      // A client that pipelines past a frame's worth while waiting is not one of ours.
      if (!c.closing) fail(c, kErrMalformed, "too much unread data");
      return;
    }
    const size_t old = c.in.size();
    c.in.resize(old + kReadChunk);
    ssize_t n = ::recv(c.fd.get(), c.in.data() + old, kReadChunk, 0);
    c.in.resize(old + (n > 0 ? static_cast<size_t>(n) : 0));
    if (n > 0) {
      budget -= std::min(budget, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c.dead = true;  // EOF or a reset: the client is gone
    return;
  }
}

void StoreServer::Impl::flush(Conn& c) {
  while (c.out_pos < c.out.size()) {
    ssize_t n =
        ::send(c.fd.get(), c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_pos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c.dead = true;
    return;
  }
  c.out.clear();
  c.out_pos = 0;
}

void StoreServer::Impl::fail(Conn& c, uint8_t code, const std::string& message) {
  if (code == kErrBadToken)
    log::warn("store: rejected a client from {}: {}", c.peer, message);
  else
    log::debug("store: closing client {}: {}", c.peer, message);
  reply(c, wire::Writer(Op::kError).u8(code).str(message));
  c.closing = true;
  c.wait.reset();
}

void StoreServer::Impl::process(Conn& c) {
  while (!c.wait && !c.closing && !c.dead) {
    const size_t avail = c.in.size() - c.in_pos;
    if (avail < wire::kHeaderBytes) break;
    const wire::Header h = wire::parse_header(c.in.data() + c.in_pos);
    if (h.magic != wire::kMagic) {
      fail(c, kErrMalformed, fmt::format("bad frame magic 0x{:08x}", h.magic));
      break;
    }
    if (h.length == 0 || h.length > wire::kMaxFrameBytes) {
      fail(c, kErrMalformed, fmt::format("bad frame length {}", h.length));
      break;
    }
    if (avail < wire::kHeaderBytes + h.length) break;
    std::string_view payload(c.in.data() + c.in_pos + wire::kHeaderBytes, h.length);
    c.in_pos += wire::kHeaderBytes + h.length;
    try {
      handle(c, payload);
    } catch (const std::exception& e) {  // e.g. bad_alloc: drop this client, keep serving
      fail(c, kErrBadRequest, fmt::format("request failed: {}", e.what()));
    }
  }
  if (c.in_pos == c.in.size()) {
    c.in.clear();
    c.in_pos = 0;
  }
}

void StoreServer::Impl::handle(Conn& c, std::string_view payload) {
  wire::Reader r(payload);
  const uint8_t op = r.u8();
  auto malformed = [&] {
    fail(c, kErrMalformed, fmt::format("malformed {} request", wire::op_name(op)));
  };
  if (!c.authed) {
    if (op != static_cast<uint8_t>(Op::kHello)) {
      fail(c, kErrMalformed, fmt::format("expected HELLO first, got opcode {}", op));
      return;
    }
    const uint32_t version = r.u32();
    const std::string offered = r.str();
    if (!r.ok() || !r.at_end()) return malformed();
    if (version != wire::kVersion) {
      fail(c, kErrBadVersion,
           fmt::format("client speaks protocol version {}, this store speaks {}", version,
                       wire::kVersion));
      return;
    }
    if (!tokens_equal(offered, token)) {
      fail(c, kErrBadToken, "job token rejected");
      return;
    }
    c.authed = true;
    reply(c, wire::Writer(Op::kOk));
    return;
  }
  switch (static_cast<Op>(op)) {
    case Op::kSet: {
      std::string key = r.str();
      std::string value = r.str();
      if (!r.ok() || !r.at_end()) return malformed();
      put(key, std::move(value));
      reply(c, wire::Writer(Op::kOk));
      return;
    }
    case Op::kGet: {
      std::string key = r.str();
      if (!r.ok() || !r.at_end()) return malformed();
      auto it = kv.find(key);
      if (it == kv.end())
        reply(c, wire::Writer(Op::kAbsent));
      else
        reply(c, wire::Writer(Op::kValue).str(it->second));
      return;
    }
    case Op::kAdd: {
      std::string key = r.str();
      const int64_t delta = r.i64();
      if (!r.ok() || !r.at_end()) return malformed();
      int64_t value = 0;
      if (auto it = kv.find(key); it != kv.end()) {
        auto parsed = parse_int64(it->second);
        if (!parsed) {
          // A client bug, not garbage: answer it and keep the connection.
          reply(c, wire::Writer(Op::kError)
                       .u8(kErrBadRequest)
                       .str(fmt::format("ADD on key '{}' whose value is not an integer", key)));
          return;
        }
        value = *parsed;
      }
      value += delta;
      put(key, std::to_string(value));
      reply(c, wire::Writer(Op::kInt).i64(value));
      return;
    }
    case Op::kWait:
    case Op::kArrive: {
      const int64_t timeout_ms = r.i64();
      Wait w;
      if (static_cast<Op>(op) == Op::kWait) {
        const uint32_t n = r.u32();
        if (!r.ok() || n > r.remaining() / 4) return malformed();
        w.keys.reserve(n);
        for (uint32_t i = 0; i < n; ++i) w.keys.push_back(r.str());
        if (!r.ok() || !r.at_end()) return malformed();
      } else {
        const int64_t count = r.i64();
        std::string counter = r.str();
        std::string done = r.str();
        std::string marker = r.str();
        if (!r.ok() || !r.at_end() || counter.empty() || done.empty()) return malformed();
        if (!marker.empty()) put(marker, "");
        int64_t arrived = 1;
        if (auto it = kv.find(counter); it != kv.end())
          arrived += parse_int64(it->second).value_or(0);
        put(counter, std::to_string(arrived));
        if (arrived > count) {
          reply(c, wire::Writer(Op::kError)
                       .u8(kErrBadRequest)
                       .str(fmt::format("barrier for {} callers entered {} times (counter '{}')",
                                        count, arrived, counter)));
          return;
        }
        if (arrived == count) put(done, "");
        w.keys.push_back(std::move(done));
      }
      for (const auto& key : w.keys)
        if (!kv.count(key)) ++w.missing;
      if (w.missing == 0) {
        reply(c, wire::Writer(Op::kOk));
        return;
      }
      w.end = Clock::now() + std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0));
      w.seq = next_seq++;
      for (const auto& key : w.keys)
        if (!kv.count(key)) watchers[key].emplace_back(c.id, w.seq);
      c.wait = std::move(w);
      if (timeout_ms <= 0) finish_wait(c);  // a probe: answer with what is missing now
      return;
    }
    case Op::kMultiGet: {
      const uint32_t n = r.u32();
      if (!r.ok() || n > r.remaining() / 4) return malformed();
      std::vector<std::string> keys;
      keys.reserve(n);
      for (uint32_t i = 0; i < n; ++i) keys.push_back(r.str());
      if (!r.ok() || !r.at_end()) return malformed();
      wire::Writer w(Op::kValues);
      w.u32(n);
      for (const auto& key : keys) {
        auto it = kv.find(key);
        w.u8(it != kv.end() ? 1 : 0).str(it != kv.end() ? it->second : std::string());
      }
      reply(c, w);
      return;
    }
    case Op::kHello:
      fail(c, kErrMalformed, "duplicate HELLO");
      return;
    default:
      fail(c, kErrMalformed, fmt::format("unknown opcode {}", op));
      return;
  }
}

void StoreServer::Impl::put(const std::string& key, std::string value) {
  const bool inserted = kv.insert_or_assign(key, std::move(value)).second;
  if (!inserted) return;
  auto it = watchers.find(key);
  if (it == watchers.end()) return;
  auto list = std::move(it->second);
  watchers.erase(it);
  for (auto [id, seq] : list) {
    auto c = conns.find(id);
    if (c == conns.end() || c->second->dead || !c->second->wait || c->second->wait->seq != seq)
      continue;  // that wait is over (timed out, or its client left)
    if (--c->second->wait->missing == 0) {
      c->second->wait.reset();
      reply(*c->second, wire::Writer(Op::kOk));
      resumed.push_back(id);
    }
  }
}

// Ends c's wait with a MISSING reply listing the keys still absent.
void StoreServer::Impl::finish_wait(Conn& c) {
  std::vector<const std::string*> missing;
  for (const auto& key : c.wait->keys)
    if (!kv.count(key)) missing.push_back(&key);
  wire::Writer w(Op::kMissing);
  w.u64(missing.size());
  const uint32_t listed =
      static_cast<uint32_t>(std::min<size_t>(missing.size(), wire::kMaxListedMissing));
  w.u32(listed);
  for (uint32_t i = 0; i < listed; ++i) w.str(*missing[i]);
  c.wait.reset();
  reply(c, w);
  resumed.push_back(c.id);
}

void StoreServer::Impl::process_resumed() {
  while (!resumed.empty()) {
    std::vector<uint64_t> ids;
    ids.swap(resumed);
    for (uint64_t id : ids) {
      auto it = conns.find(id);
      if (it != conns.end() && !it->second->dead) process(*it->second);
    }
  }
}

void StoreServer::Impl::expire_waits(Clock::time_point now) {
  for (auto& [id, conn] : conns)
    if (conn->wait && !conn->dead && now >= conn->wait->end) finish_wait(*conn);
  process_resumed();
}

// On shutdown, replies already queued (e.g. the last barrier's) still reach their clients.
void StoreServer::Impl::final_flush() {
  const Deadline deadline(1.0);
  for (auto& [id, conn] : conns) {
    Conn& c = *conn;
    if (c.dead || c.out_pos >= c.out.size()) continue;
    int err = 0;
    net::send_all(c.fd.get(), c.out.data() + c.out_pos, c.out.size() - c.out_pos, deadline, &err);
  }
  conns.clear();
}

}  // namespace mics::bootstrap
