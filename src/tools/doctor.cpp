// Placeholder until the doctor command lands; replaced by its real implementation.
#include "base/error.hpp"
#include "tools/commands.hpp"

namespace mics::tools {
Runner add_doctor_command(CLI::App& app) {
  app.add_subcommand("doctor", "(not built yet)");
  return [] () -> int { throw Error(ErrorKind::kUnavailable, "doctor is not built yet", {}); };
}
}  // namespace mics::tools
