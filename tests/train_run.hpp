#pragma once
// Test helpers for end-to-end `mics train` runs: a scratch directory per test process (the
// embedded corpus is generated there once, MICS_DATA_DIR), and the run's metrics JSON lines
// read back as the per-step losses and the summary.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "process_util.hpp"

namespace mics::testing {

// $TMPDIR/<name>-<pid>, created on first use.
inline const std::string& scratch_dir(const char* name) {
  static const std::string dir = [name] {
    std::string d = fmt::format("{}/{}-{}", std::filesystem::temp_directory_path().string(), name, ::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

struct TrainRun {
  RunResult result;
  std::vector<double> losses;  // "step" records, in order
  nlohmann::json summary;      // the "summary" record (null when the run wrote none)
};

// Runs `command` (which must write its metrics to `metrics_path`) and reads the metrics back.
inline TrainRun run_and_read_metrics(const std::string& command, const std::string& metrics_path) {
  TrainRun run{run_command(command), {}, {}};
  std::ifstream in(metrics_path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["event"] == "step") run.losses.push_back(j["loss"].get<double>());
    if (j["event"] == "summary") run.summary = j;
  }
  return run;
}

}  // namespace mics::testing
