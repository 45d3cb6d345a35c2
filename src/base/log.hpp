#pragma once
// Minimal leveled logging to stderr. The rank prefix is set once the rank is known.
#include <string>

#include <fmt/format.h>

#include "base/knobs.hpp"

namespace mics::log {

void set_rank(int rank);
bool enabled(LogLevel level);
void write(LogLevel level, const std::string& text);

template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(LogLevel::kInfo)) write(LogLevel::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(LogLevel::kWarn)) write(LogLevel::kWarn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(LogLevel::kDebug))
    write(LogLevel::kDebug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write(LogLevel::kError, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace mics::log
