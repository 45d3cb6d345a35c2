#pragma once
// Each subcommand lives in its own file and registers itself on the CLI11 app here.
// A command's run function returns the process exit status; errors are thrown as mics::Error
// and turned into a message by main().
#include <functional>

#include <CLI/CLI.hpp>

namespace mics::tools {

using Runner = std::function<int()>;

// Adds the subcommand to app and returns what to run when it is selected.
Runner add_launch_command(CLI::App& app);
Runner add_bench_command(CLI::App& app);
Runner add_doctor_command(CLI::App& app);
Runner add_engine_bench_command(CLI::App& app);
Runner add_data_command(CLI::App& app);
Runner add_plan_command(CLI::App& app);
Runner add_ckpt_command(CLI::App& app);
Runner add_report_command(CLI::App& app);
// Needs the raw arguments: `mics train -n N` re-runs itself under `mics launch`.
Runner add_train_command(CLI::App& app, int argc, char** argv);

}  // namespace mics::tools
