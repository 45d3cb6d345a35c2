// `mics report`: a run's page with plots (obs/report.hpp), or --merge: per-rank Chrome traces
// into one file that Perfetto (ui.perfetto.dev) or chrome://tracing opens (obs/trace.hpp).
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "base/error.hpp"
#include "obs/report.hpp"
#include "obs/trace.hpp"
#include "tools/commands.hpp"

namespace mics::tools {

namespace {

struct ReportOptions {
  std::vector<std::string> inputs;
  std::string out;
  std::string svg_dir;
  bool merge = false;
  size_t max_events = 1000000;
};

int run_report(const ReportOptions& o) {
  if (o.merge) {
    const std::string out = o.out.empty() ? "merged_trace.json" : o.out;
    std::puts(obs::merge_traces(o.inputs, out, o.max_events).c_str());
    return 0;
  }
  if (o.inputs.size() != 1)
    throw Error(ErrorKind::kInvalidArgument, fmt::format("mics report takes one run directory, got {}", o.inputs.size()),
                {.layer = "report", .where = "mics report", .hint = "mics report RUN_DIR --out report.html (or --merge TRACES...)"});
  const std::string out = o.out.empty() ? "report.html" : o.out;
  const obs::ReportFiles files = obs::write_report(o.inputs.front(), out, o.svg_dir);
  std::printf("report of %d steps: %s\n", files.steps, files.html.c_str());
  for (const auto& svg : files.svgs) std::printf("  plot: %s\n", svg.c_str());
  return 0;
}

}  // namespace

Runner add_report_command(CLI::App& app) {
  auto o = std::make_shared<ReportOptions>();
  CLI::App* sub = app.add_subcommand("report", "a run's metrics as one HTML page with plots; --merge: per-rank traces into one");
  sub->add_option("inputs", o->inputs, "RUN_DIR (or its metrics.jsonl); with --merge, the per-rank trace files")->required();
  sub->add_option("--out,-o", o->out, "output: report.html, or with --merge the merged trace (default merged_trace.json)");
  sub->add_option("--svg-dir", o->svg_dir, "also write each plot as an SVG file here");
  sub->add_flag("--merge", o->merge, "merge Chrome trace files of several ranks (mics train/bench --trace)");
  sub->add_option("--max-events", o->max_events, "with --merge: drop the oldest steps beyond this many events (Perfetto stays responsive)")
      ->capture_default_str();
  sub->footer(
      "Examples:\n"
      "  mics report runs/a --out runs/a/report.html --svg-dir runs/a/plots\n"
      "  mics report --merge runs/a/trace/*.json --out runs/a/trace.json   (open in ui.perfetto.dev)");
  return [o] { return run_report(*o); };
}

}  // namespace mics::tools
