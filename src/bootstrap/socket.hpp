#pragma once
// TCP plumbing of the store: an owning fd, listening, connecting with retries, and exact
// reads/writes with deadlines. Everything is non-blocking underneath and waits with poll(), so
// no call can hang past its deadline; EINTR is retried and SIGPIPE never raised (MSG_NOSIGNAL).
#include <cstddef>
#include <string>

#include "base/clock.hpp"

namespace mics::bootstrap::net {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// "host:port", with brackets around IPv6 literals.
std::string endpoint_text(const std::string& host, int port);

void set_nonblocking(int fd);
void set_nodelay(int fd);

// Waits for `events` (POLLIN/POLLOUT) on fd until the deadline; false when it passed.
// Error/hangup conditions count as ready (the following read/write reports them).
bool wait_ready(int fd, short events, const Deadline& deadline);

// Binds and listens on bind_addr:port (port 0: any free port). Returns the listening fd and
// stores the bound port. Throws Error(kUnavailable) when the address cannot be bound.
Fd listen_tcp(const std::string& bind_addr, int port, int* bound_port);

// One connection attempt to every address host resolves to, each bounded by the deadline.
// Returns an invalid Fd and the reason (errno text or resolver message) when none accepted.
Fd try_connect_tcp(const std::string& host, int port, const Deadline& deadline,
                   std::string* failure);

enum class IoResult { kOk, kTimeout, kClosed, kError };

// Writes all of data (MSG_NOSIGNAL). *err is errno on kError.
IoResult send_all(int fd, const void* data, size_t size, const Deadline& deadline, int* err);
// Reads exactly size bytes. kClosed when the peer closed the connection first.
IoResult recv_exact(int fd, void* data, size_t size, const Deadline& deadline, int* err);

}  // namespace mics::bootstrap::net
