// The mics binary: parses the subcommand, runs it, and is the one place where an error
// becomes an exit status.
#include <unistd.h>

#include <csignal>
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

// libfabric's psm provider links libinfinipath, whose load-time constructor installs handlers
// for SIGINT, SIGTERM and the crash signals that write a backtrace file (mics.<host>.<pid>.btr)
// into the working directory and then exit 1 (after faulting inside the handler): a Ctrl-C or a
// launcher's SIGTERM in the first second looked like a failed run with no message. exec() resets
// every handled signal to its default, so a handler here can only be a library's: back to the
// default (ignored signals stay ignored; mics installs its own stop handlers where it wants them).
// IPATH_NO_BACKTRACE=1 (unless the user set it) keeps the library from installing them at all in
// the processes started from here (the re-exec below, the ranks of `mics launch`), whose loading
// of the CUDA and fabric libraries takes long enough for an early signal to land in it.
void drop_library_signal_handlers() {
  ::setenv("IPATH_NO_BACKTRACE", "1", /*overwrite=*/0);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) {
    struct sigaction current {};
    if (::sigaction(sig, nullptr, &current) != 0) continue;
    const bool handled = (current.sa_flags & SA_SIGINFO) ? current.sa_sigaction != nullptr
                                                         : current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN;
    if (handled) std::signal(sig, SIG_DFL);
  }
}

}  // namespace

int main(int argc, char** argv) {
  drop_library_signal_handlers();
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
