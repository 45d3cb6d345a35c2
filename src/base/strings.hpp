#pragma once
// Small string helpers shared by every layer.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mics {

std::optional<int64_t> parse_int64(std::string_view text);
std::optional<double> parse_f64(std::string_view text);
// "64M", "1GiB", "4096", "2K": sizes with binary suffixes K/M/G/T (optional trailing B/iB).
std::optional<int64_t> parse_size(std::string_view text);
std::string format_bytes(double bytes);  // "1.5 MiB"
std::vector<std::string> split(std::string_view text, char sep);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
std::string trim(std::string_view text);
// Environment variable, or nullopt when unset or empty.
std::optional<std::string> env_string(const char* name);

}  // namespace mics
