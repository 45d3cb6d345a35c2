#include "obs/report.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace mics::obs {

namespace fs = std::filesystem;

namespace {

// A summary value as a reader wants it: strings without JSON quotes, floats to 6 significant
// digits, integers and booleans as they are.
std::string cell_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt::format("{:.6g}", v.get<double>());
  return v.dump();
}


std::string escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
    }
  }
  return out;
}

// Tick values at 1, 2, 5 x 10^k covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

std::string tick_label(double v) {
  const double a = std::abs(v);
  if (a >= 1e9) return fmt::format("{:g}G", v / 1e9);
  if (a >= 1e6) return fmt::format("{:g}M", v / 1e6);
  if (a >= 1e4) return fmt::format("{:g}k", v / 1e3);
  return fmt::format("{:g}", v);
}

std::string size_label(double bytes) {
  const char* units[] = {"B", "K", "M", "G", "T"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  return fmt::format("{:g}{}", bytes, units[u]);
}

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

}  // namespace

std::string render_svg(const Plot& plot, int width, int height) {
  const double left = 70, right = 160, top = 34, bottom = 46;
  const double pw = width - left - right, ph = height - top - bottom;
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = 0, ymax = -xmin;
  std::vector<double> stack_top;
  if (plot.stacked_bars && !plot.series.empty()) stack_top.assign(plot.series.front().x.size(), 0.0);
  for (const auto& s : plot.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i]) || !std::isfinite(s.x[i])) continue;
      double x = s.x[i];
      if (plot.log_x) x = std::log2(std::max(1.0, x));
      xmin = std::min(xmin, x);
      xmax = std::max(xmax, x);
      if (plot.stacked_bars && i < stack_top.size()) {
        stack_top[i] += std::max(0.0, s.y[i]);
        ymax = std::max(ymax, stack_top[i]);
      } else {
        ymin = std::min(ymin, s.y[i]);
        ymax = std::max(ymax, s.y[i]);
      }
    }
  const bool empty = !std::isfinite(xmin);
  if (empty) xmin = 0, xmax = 1, ymax = 1;
  if (xmax == xmin) xmin -= 0.5, xmax += 0.5;
  if (plot.stacked_bars) xmin -= 0.5, xmax += 0.5;
  if (!(ymax > ymin)) ymax = ymin + 1;
  // Loss-like plots read better without the zero baseline.
  if (!plot.stacked_bars && ymin >= 0 && plot.y_label.find("nats") != std::string::npos) {
    double lo = ymax;
    for (const auto& s : plot.series)
      for (double y : s.y)
        if (std::isfinite(y)) lo = std::min(lo, y);
    ymin = std::max(0.0, lo - 0.05 * (ymax - lo));
  }
  ymax += 0.05 * (ymax - ymin);
  const auto X = [&](double x) {
    if (plot.log_x) x = std::log2(std::max(1.0, x));
    return left + (x - xmin) / (xmax - xmin) * pw;
  };
  const auto Y = [&](double y) { return top + ph - (y - ymin) / (ymax - ymin) * ph; };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"12\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{3}</text>\n",
      width, height, left, escape(plot.title));
  // Grid and ticks.
  for (double t : nice_ticks(ymin, ymax)) {
    svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e5e5e5\"/>\n", left, Y(t), left + pw, Y(t));
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", left - 6, Y(t) + 4, tick_label(t));
  }
  if (plot.log_x) {
    for (int e = static_cast<int>(std::ceil(xmin)); e <= static_cast<int>(std::floor(xmax)); ++e) {
      const double x = left + (e - xmin) / (xmax - xmin) * pw;
      if ((xmax - xmin) > 12 && e % 2) continue;
      svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", x, top + ph + 16, size_label(std::ldexp(1.0, e)));
    }
  } else {
    for (double t : nice_ticks(xmin, xmax, 8))
      if (!plot.stacked_bars || std::abs(t - std::round(t)) < 1e-9)
        svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", X(t), top + ph + 16, tick_label(t));
  }
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n", left, top, pw, ph);
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", left + pw / 2, height - 8.0, escape(plot.x_label));
  svg += fmt::format("<text x=\"14\" y=\"{:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1f})\">{}</text>\n", top + ph / 2,
                     top + ph / 2, escape(plot.y_label));
  if (empty) svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n", left + pw / 2, top + ph / 2);
  // Data.
  std::vector<double> base(stack_top.size(), 0.0);
  const double bar_w = plot.stacked_bars && !stack_top.empty() ? std::max(1.0, pw / (xmax - xmin) * 0.8) : 0;
  for (size_t si = 0; si < plot.series.size(); ++si) {
    const Series& s = plot.series[si];
    const std::string color = s.color.empty() ? kPalette[si % 8] : s.color;
    if (plot.stacked_bars) {
      for (size_t i = 0; i < s.x.size() && i < base.size(); ++i) {
        const double v = std::isfinite(s.y[i]) ? std::max(0.0, s.y[i]) : 0;
        if (v <= 0) continue;
        svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"/>\n", X(s.x[i]) - bar_w / 2,
                           Y(base[i] + v), bar_w, Y(base[i]) - Y(base[i] + v), color);
        base[i] += v;
      }
    } else {
      std::string points;
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (std::isfinite(s.y[i])) points += fmt::format("{:.1f},{:.1f} ", X(s.x[i]), Y(s.y[i]));
      if (!points.empty())
        svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{} points=\"{}\"/>\n", color,
                           s.dashed ? " stroke-dasharray=\"6 4\"" : "", points);
      if (s.markers)
        for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
          if (std::isfinite(s.y[i]))
            svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", X(s.x[i]), Y(s.y[i]), color);
    }
    // Legend.
    const double ly = top + 10 + 18.0 * static_cast<double>(si);
    svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"14\" height=\"4\" fill=\"{}\"/>\n", left + pw + 12, ly - 4, color);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n", left + pw + 32, ly + 2, escape(s.name));
  }
  svg += "</svg>\n";
  return svg;
}

namespace {

double num(const nlohmann::json& j, const char* key, double fallback = NAN) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  if (!out || !(out << text) || !out.flush())
    throw Error(ErrorKind::kIo, fmt::format("cannot write {}", path),
                {.layer = "obs", .where = "mics report", .hint = "check that the directory exists and is writable"});
}

}  // namespace

ReportFiles write_report(const std::string& input, const std::string& html_path, const std::string& svg_dir) {
  const std::string metrics_path = fs::is_directory(input) ? (fs::path(input) / "metrics.jsonl").string() : input;
  std::ifstream in(metrics_path);
  if (!in)
    throw Error(ErrorKind::kIo, fmt::format("cannot read {}", metrics_path),
                {.layer = "obs", .where = "mics report", .hint = "give a run directory of mics train --out, or its metrics.jsonl"});
  std::vector<nlohmann::json> steps;
  nlohmann::json summary;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::kInvalidArgument, fmt::format("{}:{}: not JSON ({})", metrics_path, number, e.what()),
                  {.layer = "obs", .where = "mics report", .hint = "give the metrics.jsonl that mics train wrote"});
    }
    if (!j.is_object()) continue;
    const std::string event = j.value("event", "");
    if (event == "step") steps.push_back(std::move(j));
    if (event == "summary") summary = std::move(j);
  }
  if (steps.empty())
    throw Error(ErrorKind::kInvalidArgument, fmt::format("{} has no step records", metrics_path),
                {.layer = "obs", .where = "mics report", .hint = "give the metrics.jsonl that mics train wrote"});

  std::vector<double> x, loss, eval_x, eval, tps, compute, exposed, data, ckpt, intra, inter;
  for (const auto& s : steps) {
    const double step = num(s, "step");
    const double step_ms = num(s, "step_ms", 0), exp_ms = num(s, "comm_exposed_ms", 0), data_ms = num(s, "data_wait_ms", 0),
                 ckpt_ms = num(s, "checkpoint_ms", 0);
    x.push_back(step);
    loss.push_back(num(s, "loss"));
    if (std::isfinite(num(s, "eval_loss"))) {
      eval_x.push_back(step);
      eval.push_back(num(s, "eval_loss"));
    }
    tps.push_back(num(s, "tokens_per_s"));
    exposed.push_back(exp_ms);
    data.push_back(data_ms);
    ckpt.push_back(ckpt_ms);
    compute.push_back(std::max(0.0, step_ms - exp_ms - data_ms - ckpt_ms));
    intra.push_back(num(s, "intra_bytes"));
    inter.push_back(num(s, "inter_bytes"));
  }
  const double floor = summary.is_object() ? num(summary, "entropy_floor") : NAN;
  if (std::isfinite(num(summary, "eval_loss")) && (eval_x.empty() || eval_x.back() < x.back())) {
    eval_x.push_back(x.back());
    eval.push_back(num(summary, "eval_loss"));
  }

  std::vector<std::pair<std::string, Plot>> plots;
  {
    Plot p{"Loss", "step", "loss (nats/token)", false, false, {}};
    p.series.push_back({"train loss", x, loss, "#1f77b4"});
    if (!eval.empty()) p.series.push_back({"eval loss", eval_x, eval, "#d62728", false, true});
    if (std::isfinite(floor)) p.series.push_back({"entropy floor", {x.front(), x.back()}, {floor, floor}, "#555555", true});
    plots.emplace_back("loss", p);
  }
  plots.emplace_back("tokens_per_s", Plot{"Throughput", "step", "tokens/s", false, false, {{"tokens/s", x, tps, "#2ca02c"}}});
  plots.emplace_back("step_time", Plot{"Step time breakdown", "step", "ms", false, true,
                                       {{"compute", x, compute, "#1f77b4"},
                                        {"exposed comm", x, exposed, "#d62728"},
                                        {"data wait", x, data, "#ff7f0e"},
                                        {"checkpoint", x, ckpt, "#9467bd"}}});
  plots.emplace_back("bytes_per_rail", Plot{"Bytes sent per step (rank 0)", "step", "bytes",
                                            false, false, {{"intra-node", x, intra, "#1f77b4"}, {"inter-node", x, inter, "#d62728"}}});
  {
    Plot p{"Collective bus bandwidth by size (rank 0, mean per size bucket)", "message size (whole array)", "busbw (GB/s)", true, false, {}};
    if (summary.contains("collectives"))
      for (const char* op : {"all_gather", "reduce_scatter", "all_reduce", "broadcast"}) {
        Series s{op, {}, {}, "", false, true};
        for (const auto& row : summary["collectives"].value("by_op", nlohmann::json::array()))
          if (row.value("op", "") == op) {
            s.x.push_back(std::max(1.0, num(row, "bucket_bytes", 1)));
            s.y.push_back(num(row, "busbw_gbps", 0));
          }
        if (!s.x.empty()) p.series.push_back(s);
      }
    plots.emplace_back("collective_busbw", p);
  }

  ReportFiles files;
  files.steps = static_cast<int>(steps.size());
  if (!svg_dir.empty()) {
    std::error_code ec;
    fs::create_directories(svg_dir, ec);
    for (const auto& [name, plot] : plots) {
      const std::string path = (fs::path(svg_dir) / (name + ".svg")).string();
      write_file(path, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + render_svg(plot));
      files.svgs.push_back(path);
    }
  }

  // The page.
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mics report</title>\n"
      "<style>body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;max-width:1000px}"
      "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
      "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.plot{margin:12px 0}"
      "h2{margin-top:28px;border-bottom:1px solid #ddd}</style></head><body>\n";
  html += fmt::format("<h1>mics report</h1>\n<p>{} ({} steps)</p>\n", escape(metrics_path), steps.size());
  if (summary.is_object()) {
    html += "<h2>Run</h2>\n<table id=\"summary\">\n";
    for (const char* key : {"model", "params", "strategy", "world_size", "nodes", "partition_size", "grad_accum", "micro_batch",
                            "seq_len", "steps", "final_loss", "eval_loss", "entropy_floor", "tokens_per_s", "train_seconds",
                            "comm_exposed_ms_per_step", "data_wait_ms_per_step", "intra_node_bytes_per_step",
                            "inter_node_bytes_per_step", "traffic_matches_model"})
      if (summary.contains(key)) html += fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", key, escape(cell_text(summary[key])));
    if (summary.contains("collectives"))
      html += fmt::format("<tr><td>collective records equal the fabric counters</td><td>{}</td></tr>\n",
                          summary["collectives"].value("records_match_fabric", false) ? "yes" : "NO");
    html += "</table>\n";
  }
  html += "<h2>Plots</h2>\n";
  for (const auto& [name, plot] : plots) html += fmt::format("<div class=\"plot\" id=\"plot-{}\">\n{}</div>\n", name, render_svg(plot));

  // Stragglers.
  html += "<h2>Stragglers</h2>\n<p>Per step, the straggler is the rank whose communication thread sat idle longest "
          "(waiting for its own compute) while the others waited inside collectives; its delay is that idle time minus "
          "the median rank's. The arrival spread is the largest gap between the first and the last rank entering one of "
          "the step's collectives (common clock: rank 0's, estimated at start-up).</p>\n";
  if (summary.contains("stragglers")) {
    html += "<table id=\"stragglers\"><tr><th>rank</th><th>steps named</th><th>total delay (ms)</th><th>mean delay (ms)</th></tr>\n";
    for (const auto& s : summary["stragglers"]) {
      const double steps_named = num(s, "steps", 0);
      html += fmt::format("<tr><td>{}</td><td>{}</td><td>{:.1f}</td><td>{:.2f}</td></tr>\n", s.value("rank", -1), steps_named,
                          num(s, "delay_ms", 0), steps_named > 0 ? num(s, "delay_ms", 0) / steps_named : 0);
    }
    html += "</table>\n";
  }
  std::vector<const nlohmann::json*> worst;
  for (const auto& s : steps)
    if (s.contains("straggler_rank")) worst.push_back(&s);
  std::sort(worst.begin(), worst.end(),
            [](const auto* a, const auto* b) { return num(*a, "straggler_delay_ms", 0) > num(*b, "straggler_delay_ms", 0); });
  if (worst.size() > 20) worst.resize(20);
  if (!worst.empty()) {
    html += "<p>The steps with the largest delays:</p>\n<table id=\"straggler-steps\"><tr><th>step</th><th>straggler rank</th>"
            "<th>delay (ms)</th><th>arrival spread (ms)</th><th>step (ms)</th></tr>\n";
    for (const auto* s : worst)
      html += fmt::format("<tr><td>{}</td><td>{}</td><td>{:.2f}</td><td>{:.2f}</td><td>{:.1f}</td></tr>\n", (*s).value("step", 0),
                          (*s).value("straggler_rank", -1), num(*s, "straggler_delay_ms", 0), num(*s, "arrival_spread_ms", 0),
                          num(*s, "step_ms", 0));
    html += "</table>\n";
  }
  // Collectives table.
  if (summary.contains("collectives")) {
    html += "<h2>Collectives (rank 0)</h2>\n<table id=\"collectives\"><tr><th>op</th><th>size bucket</th><th>count</th>"
            "<th>bytes</th><th>intra sent</th><th>inter sent</th><th>time (s)</th><th>algbw (GB/s)</th><th>busbw (GB/s)</th></tr>\n";
    for (const auto& row : summary["collectives"].value("by_op", nlohmann::json::array()))
      html += fmt::format("<tr><td>{}</td><td>&ge; {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4f}</td><td>{:.3f}</td><td>{:.3f}</td></tr>\n",
                          row.value("op", ""), size_label(num(row, "bucket_bytes", 0)), row.value("count", 0),
                          row.value("bytes", uint64_t{0}), row.value("intra_bytes", uint64_t{0}), row.value("inter_bytes", uint64_t{0}),
                          num(row, "seconds", 0), num(row, "algbw_gbps", 0), num(row, "busbw_gbps", 0));
    html += "</table>\n";
  }
  html += "<p style=\"color:#888\">made by mics report: self-contained (no scripts, nothing loaded from the network)</p>\n</body></html>\n";
  const fs::path parent = fs::path(html_path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  write_file(html_path, html);
  files.html = html_path;
  return files;
}

}  // namespace mics::obs
