// Placeholder until the launch command lands; replaced by its real implementation.
#include "base/error.hpp"
#include "tools/commands.hpp"

namespace mics::tools {
Runner add_launch_command(CLI::App& app) {
  app.add_subcommand("launch", "(not built yet)");
  return [] () -> int { throw Error(ErrorKind::kUnavailable, "launch is not built yet", {}); };
}
}  // namespace mics::tools
