// The mics binary: parses the subcommand, runs it, and is the one place where an error
// becomes an exit status.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include <CLI/CLI.hpp>

#include "base/error.hpp"
#include "base/knobs.hpp"
#include "mics/build_info.hpp"
#include "tools/commands.hpp"

namespace {

// OpenMP threads that finish a parallel loop spin for a while by default (libgomp), which on
// a busy or oversubscribed host takes the core from the thread with work: measured 20x slower
// training on 2 busy cores. libgomp reads OMP_WAIT_POLICY when it loads, before main, so
// `mics train` re-runs itself once with the passive policy unless the user chose one.
void prefer_passive_openmp_waits(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "train" || std::getenv("OMP_WAIT_POLICY")) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_openmp_waits(argc, argv);
  CLI::App app{"mics: MiCS sharded data-parallel training over libfabric and NCCL"};
  app.set_version_flag("--version", std::string("mics ") + mics::build::kVersion);
  app.require_subcommand(1);

  std::map<CLI::App*, mics::tools::Runner> runners;
  auto add = [&](mics::tools::Runner (*adder)(CLI::App&)) {
    size_t before = app.get_subcommands({}).size();
    mics::tools::Runner run = adder(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) runners[subs.back()] = std::move(run);
  };
  add(mics::tools::add_launch_command);
  add(mics::tools::add_bench_command);
  add(mics::tools::add_doctor_command);
  add(mics::tools::add_engine_bench_command);
  add(mics::tools::add_data_command);
  add(mics::tools::add_plan_command);
  add(mics::tools::add_ckpt_command);
  add(mics::tools::add_report_command);
  {
    mics::tools::Runner run = mics::tools::add_train_command(app, argc, argv);
    runners[app.get_subcommands({}).back()] = std::move(run);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    mics::knobs();  // read (and validate) every knob before any work
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
    return 2;
  } catch (const mics::Error& e) {
    std::fprintf(stderr, "mics: error: %s\n", e.what());
    return e.kind() == mics::ErrorKind::kInvalidArgument || e.kind() == mics::ErrorKind::kConfig
               ? 2
               : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mics: error: %s\n", e.what());
    return 1;
  }
}
