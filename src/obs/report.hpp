#pragma once
// `mics report`: one self-contained HTML page (inline SVG and CSS, no scripts, nothing from the
// network) from a run's metrics (RUN_DIR/metrics.jsonl: "step" records and the "summary"), with
// plots drawn here: loss and eval loss (with the entropy floor when known), tokens/s, the
// step-time breakdown (compute, exposed communication, data wait, checkpoint), bytes per rail
// per step, collective bus bandwidth by size, and the straggler table. The same plots can be
// written as SVG files.
#include <string>
#include <vector>

namespace mics::obs {

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string color;
  bool dashed = false;
  bool markers = false;
};

struct Plot {
  std::string title, x_label, y_label;
  bool log_x = false;         // base-2 ticks (sizes)
  bool stacked_bars = false;  // series are stacked per x (same x in every series)
  std::vector<Series> series;
};

// A standalone SVG document (also valid inline in HTML5).
std::string render_svg(const Plot& plot, int width = 720, int height = 320);

struct ReportFiles {
  std::string html;               // where the page went
  std::vector<std::string> svgs;  // the plot files written (empty without svg_dir)
  int steps = 0;
};

// `input`: a run directory (its metrics.jsonl) or a metrics file. Throws mics::Error naming
// the file and line on unreadable input.
ReportFiles write_report(const std::string& input, const std::string& html_path, const std::string& svg_dir);

}  // namespace mics::obs
