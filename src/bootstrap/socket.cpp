// TCP plumbing of the store (see socket.hpp).
#include "bootstrap/socket.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "base/error.hpp"

namespace mics::bootstrap::net {

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);  // close() is not retried on EINTR: the fd is gone on Linux
  fd_ = fd;
}

std::string endpoint_text(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

namespace {

int poll_timeout_ms(const Deadline& deadline) {
  double ms = std::ceil(deadline.remaining_s() * 1000.0);
  if (ms <= 0) return 0;
  if (ms > 60'000) return 60'000;  // re-check the deadline at least every minute
  return static_cast<int>(ms);
}

struct AddrInfoList {
  addrinfo* head = nullptr;
  ~AddrInfoList() {
    if (head) freeaddrinfo(head);
  }
};

}  // namespace

bool wait_ready(int fd, short events, const Deadline& deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, poll_timeout_ms(deadline));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;  // let the caller's syscall report it
    if (deadline.expired()) return false;
  }
}

Fd listen_tcp(const std::string& bind_addr, int port, int* bound_port) {
  const std::string where = fmt::format("store listen on {}", endpoint_text(bind_addr, port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  AddrInfoList list;
  const std::string service = std::to_string(port);
  int rc = getaddrinfo(bind_addr.empty() ? nullptr : bind_addr.c_str(), service.c_str(), &hints,
                       &list.head);
  if (rc != 0)
    throw Error(ErrorKind::kUnavailable,
                fmt::format("cannot resolve bind address '{}': {}", bind_addr, gai_strerror(rc)),
                {.layer = "bootstrap",
                 .where = where,
                 .hint = "bind the store to an address of this host, e.g. 0.0.0.0"});
  int last_err = 0;
  for (addrinfo* ai = list.head; ai; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last_err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), 1024) != 0) {
      last_err = errno;
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    *bound_port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    set_nonblocking(fd.get());
    return fd;
  }
  throw Error(
      ErrorKind::kUnavailable,
      fmt::format("cannot listen on {}: {}", endpoint_text(bind_addr, port), errno_text(last_err)),
      {.layer = "bootstrap",
       .where = where,
       .hint = last_err == EADDRINUSE
                   ? "the port is in use (another job, or an earlier run still exiting): "
                     "choose another MICS_MASTER_PORT / --port"
                   : "check the bind address and the port (ports below 1024 need root)"});
}

Fd try_connect_tcp(const std::string& host, int port, const Deadline& deadline,
                   std::string* failure) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  AddrInfoList list;
  const std::string service = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &list.head);
  if (rc != 0) {
    *failure = fmt::format("cannot resolve '{}': {}", host,
                           rc == EAI_SYSTEM ? errno_text(errno) : std::string(gai_strerror(rc)));
    return Fd();
  }
  for (addrinfo* ai = list.head; ai; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) {
      *failure = errno_text(errno);
      continue;
    }
    int ret;
    do {
      ret = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    } while (ret != 0 && errno == EINTR);
    if (ret != 0 && errno != EINPROGRESS) {
      *failure = errno_text(errno);
      continue;
    }
    if (ret != 0) {
      if (!wait_ready(fd.get(), POLLOUT, deadline)) {
        *failure = "connect did not complete before the deadline";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        *failure = errno_text(err);
        continue;
      }
    }
    set_nodelay(fd.get());
    return fd;
  }
  return Fd();
}

IoResult send_all(int fd, const void* data, size_t size, const Deadline& deadline, int* err) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(fd, POLLOUT, deadline)) return IoResult::kTimeout;
      continue;
    }
    *err = n < 0 ? errno : EPIPE;
    return (*err == EPIPE || *err == ECONNRESET) ? IoResult::kClosed : IoResult::kError;
  }
  return IoResult::kOk;
}

IoResult recv_exact(int fd, void* data, size_t size, const Deadline& deadline, int* err) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = ::recv(fd, p, size, 0);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return IoResult::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLIN, deadline)) return IoResult::kTimeout;
      continue;
    }
    *err = errno;
    return errno == ECONNRESET ? IoResult::kClosed : IoResult::kError;
  }
  return IoResult::kOk;
}

}  // namespace mics::bootstrap::net
