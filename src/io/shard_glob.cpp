// Expanding the --data argument: comma-separated glob patterns into sorted shard paths.
#include <glob.h>
#include <sys/stat.h>

#include <algorithm>

#include <fmt/format.h>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "io/token_shard.hpp"

namespace mics::io {

std::vector<std::string> expand_shard_glob(const std::string& patterns) {
  std::vector<std::string> files;
  const ErrorContext ctx{.layer = "io",
                         .where = fmt::format("expanding shard paths '{}'", patterns)};
  for (const std::string& raw : split(patterns, ',')) {
    const std::string pattern = trim(raw);
    if (pattern.empty()) continue;
    const bool is_pattern = pattern.find_first_of("*?[") != std::string::npos;
    glob_t g{};
    const int rc = ::glob(pattern.c_str(), GLOB_MARK, nullptr, &g);
    if (rc == GLOB_NOMATCH) {
      ::globfree(&g);
      ErrorContext c = ctx;
      c.hint = "check the path; mics data prepare / synth write shards";
      if (is_pattern)
        throw Error(ErrorKind::kUnavailable, fmt::format("pattern '{}' matches no file", pattern),
                    c);
      throw Error(ErrorKind::kUnavailable, fmt::format("shard {}: no such file", pattern), c);
    }
    if (rc != 0) {
      ::globfree(&g);
      throw Error(ErrorKind::kIo,
                  fmt::format("pattern '{}': glob failed ({})", pattern,
                              rc == GLOB_ABORTED ? "read error" : "out of memory"),
                  ctx);
    }
    size_t added = 0;
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      std::string p = g.gl_pathv[i];
      if (!p.empty() && p.back() == '/') continue;  // a directory (GLOB_MARK)
      files.push_back(std::move(p));
      ++added;
    }
    ::globfree(&g);
    if (added == 0) {
      ErrorContext c = ctx;
      c.hint = "name the shard files, e.g. DIR/*_train_*.bin";
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("'{}' matches only directories, no shard file", pattern), c);
    }
  }
  if (files.empty()) {
    ErrorContext c = ctx;
    c.hint = "give one or more shard paths or glob patterns, separated by commas";
    throw Error(ErrorKind::kInvalidArgument, "no shard path given", c);
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

}  // namespace mics::io
