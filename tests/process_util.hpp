#pragma once
// Test helpers: run a command line and collect its exit status, output and duration.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>

namespace mics::testing {

struct RunResult {
  int status = -1;  // exit code, or 128 + signal
  std::string output;
  double seconds = 0;
};

// A TCP port that was free a moment ago: the kernel's pick for port 0 on the loopback. A
// fixed or random port collides with other tests' ports when ctest runs many at once.
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sin);
  const bool ok = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0;
  if (fd >= 0) close(fd);
  return ok ? ntohs(sin.sin_port) : 0;
}

inline RunResult run_command(const std::string& command) {
  RunResult result;
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  const int raw = pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace mics::testing
