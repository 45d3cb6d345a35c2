// Placeholder until the bench command lands; replaced by its real implementation.
#include "base/error.hpp"
#include "tools/commands.hpp"

namespace mics::tools {
Runner add_bench_command(CLI::App& app) {
  app.add_subcommand("bench", "(not built yet)");
  return [] () -> int { throw Error(ErrorKind::kUnavailable, "bench is not built yet", {}); };
}
}  // namespace mics::tools
