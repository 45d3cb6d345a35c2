#include "base/log.hpp"

#include <atomic>
#include <cstdio>

namespace mics::log {

static std::atomic<int> g_rank{-1};

void set_rank(int rank) {
  g_rank = rank;
}

bool enabled(LogLevel level) {
  return static_cast<int>(level) <= static_cast<int>(knobs().log_level);
}

void write(LogLevel level, const std::string& text) {
  static const char* names[] = {"error", "warn", "info", "debug"};
  const int rank = g_rank.load();
  std::string line =
      rank >= 0 ? fmt::format("mics[{}] {}: {}\n", rank, names[static_cast<int>(level)], text)
                : fmt::format("mics {}: {}\n", names[static_cast<int>(level)], text);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace mics::log
