#include "train/metrics.hpp"

#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace mics::train {

namespace {

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::string duration(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) : fmt::format("{:02}:{:02}", s / 60, s % 60);
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  return fmt::format("{:.2f} {}", bytes, units[u]);
}

}  // namespace

StepRecord RunTally::add(int step, double loss, double lr, double grad_norm, bool skipped, double step_s,
                         double exposed_s) {
  ++steps_;
  train_s_ += step_s;
  exposed_s_ += exposed_s;
  last_loss_ = loss;
  if (step >= warmup_) {
    steady_s_ += step_s;
    ++steady_steps_;
  }
  StepRecord rec;
  rec.step = step + 1;
  rec.loss = loss;
  rec.lr = lr;
  rec.grad_norm = grad_norm;
  rec.skipped = skipped;
  rec.step_ms = step_s * 1e3;
  rec.tokens_per_s = static_cast<double>(tokens_per_step_) / step_s;
  rec.comm_exposed_ms = exposed_s * 1e3;
  return rec;
}

void RunTally::fill(Summary& summary) const {
  summary.steps = steps_;
  summary.final_loss = last_loss_;
  summary.tokens_per_s = steady_steps_ > 0 ? static_cast<double>(tokens_per_step_) * steady_steps_ / steady_s_ : 0;
  summary.train_seconds = train_s_;
  summary.comm_exposed_ms_per_step = per_step(exposed_s_ * 1e3);
}

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "w");
  if (!file_)
    throw Error(ErrorKind::kIo, fmt::format("cannot open --metrics {}: {}", path, errno_text(errno)),
                {.layer = "train", .where = "mics train", .hint = "choose a writable path"});
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write_line(const std::string& line) {
  if (std::fputs(line.c_str(), file_) < 0 || std::fputc('\n', file_) < 0 || std::fflush(file_) != 0)
    throw Error(ErrorKind::kIo, fmt::format("writing {}: {}", path_, errno_text(errno)),
                {.layer = "train", .where = "the metrics file", .hint = "check the free space of its filesystem"});
}

void MetricsWriter::step(const StepRecord& r) {
  nlohmann::json j = {{"event", "step"},
                      {"step", r.step},
                      {"loss", number_or_null(r.loss)},
                      {"lr", r.lr},
                      {"grad_norm", number_or_null(r.grad_norm)},
                      {"skipped", r.skipped},
                      {"step_ms", r.step_ms},
                      {"tokens_per_s", r.tokens_per_s},
                      {"comm_exposed_ms", r.comm_exposed_ms},
                      {"data_wait_ms", r.data_wait_ms},
                      {"checkpoint_ms", r.checkpoint_ms}};
  if (std::isfinite(r.eval_loss)) j["eval_loss"] = r.eval_loss;
  j["straggler_rank"] = r.straggler_rank;
  j["straggler_delay_ms"] = r.straggler_delay_ms;
  j["arrival_spread_ms"] = r.arrival_spread_ms;
  j["intra_bytes"] = r.intra_bytes;
  j["inter_bytes"] = r.inter_bytes;
  write_line(j.dump());
}

void MetricsWriter::summary(const Summary& s) {
  nlohmann::json j = {{"event", "summary"},
                      {"model", s.model},
                      {"params", s.params},
                      {"strategy", s.strategy},
                      {"world_size", s.world_size},
                      {"nodes", s.nodes},
                      {"partition_size", s.partition_size},
                      {"grad_accum", s.grad_accum},
                      {"micro_batch", s.micro_batch},
                      {"seq_len", s.seq_len},
                      {"steps", s.steps},
                      {"stopped_early", s.stopped_early},
                      {"final_loss", number_or_null(s.final_loss)},
                      {"eval_loss", number_or_null(s.eval_loss)},
                      {"entropy_floor", s.entropy_floor >= 0 ? nlohmann::json(s.entropy_floor) : nlohmann::json(nullptr)},
                      {"tokens_per_s", s.tokens_per_s},
                      {"flops_per_token", s.flops_per_token},
                      {"train_seconds", s.train_seconds},
                      {"comm_exposed_ms_per_step", s.comm_exposed_ms_per_step},
                      {"data_wait_ms_per_step", s.data_wait_ms_per_step},
                      {"intra_node_bytes_per_step", s.intra_node_bytes_per_step},
                      {"inter_node_bytes_per_step", s.inter_node_bytes_per_step},
                      {"traffic_matches_model", s.traffic_matches_model},
                      {"model_state_bytes_per_rank", s.model_state_bytes_per_rank},
                      {"activation_bytes", s.activation_bytes},
                      {"recompute", s.recompute},
                      {"peak_rss_bytes", s.peak_rss_bytes},
                      {"host_cores", s.host_cores},
                      {"ranks_on_host", s.ranks_on_host},
                      {"compute_threads", s.compute_threads}};
  if (!s.observability_json.empty()) j.update(nlohmann::json::parse(s.observability_json));
  write_line(j.dump());
}

StepPrinter::StepPrinter(bool active, int total_steps, int every)
    : active_(active), bar_(active && ::isatty(STDOUT_FILENO)), total_(total_steps), every_(every) {}

void StepPrinter::step(const StepRecord& r) {
  if (!active_) return;
  const bool eval = std::isfinite(r.eval_loss);
  if (bar_) {
    const double elapsed = seconds_since(start_);
    const double eta = elapsed / r.step * (total_ - r.step);
    const int width = 30, filled = width * r.step / total_;
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < width) bar += '>' + std::string(static_cast<size_t>(width - filled - 1), ' ');
    std::printf("\r[%s] %d/%d loss %.4f | %.0f tok/s | ETA %s   ", bar.c_str(), r.step, total_, r.loss, r.tokens_per_s,
                duration(eta).c_str());
    bar_drawn_ = true;
    if (eval) {
      std::printf("\n  eval loss %.4f at step %d\n", r.eval_loss, r.step);
      bar_drawn_ = false;
    }
    std::fflush(stdout);
    return;
  }
  if (r.step % every_ != 0 && r.step != 1 && r.step != total_ && !eval) return;
  std::string line = fmt::format("step: {:>{}}  loss: {:.4f}  grad_norm: {:.4f}  lr: {:.2e}  step_ms: {:.1f}  tps: {:.0f}  "
                                 "comm_exposed_ms: {:.1f}",
                                 r.step, fmt::formatted_size("{}", total_), r.loss, r.grad_norm, r.lr, r.step_ms,
                                 r.tokens_per_s, r.comm_exposed_ms);
  if (r.skipped) line += "  (skipped: non-finite gradients)";
  if (eval) line += fmt::format("  eval_loss: {:.4f}", r.eval_loss);
  std::puts(line.c_str());
  std::fflush(stdout);
}

void StepPrinter::note(const std::string& line) {
  if (!active_) return;
  if (bar_drawn_) std::putchar('\n');
  bar_drawn_ = false;
  std::puts(line.c_str());
  std::fflush(stdout);
}

void StepPrinter::finish() {
  if (active_ && bar_drawn_) std::putchar('\n');
  bar_drawn_ = false;
  if (active_) std::fflush(stdout);
}

bool report_step(StepPrinter& printer, MetricsWriter* metrics, const StepRecord& record, bool stop) {
  printer.step(record);
  if (metrics) metrics->step(record);
  if (stop) printer.note(fmt::format("stopping after step {}: got a stop signal (SIGTERM/SIGINT)", record.step));
  return stop;
}

std::string format_summary(const Summary& s) {
  std::string t = "summary\n";
  auto row = [&t](const std::string& k, const std::string& v) { t += fmt::format("  {:<28} {}\n", k, v); };
  row("model", fmt::format("{} ({:.2f}M params)", s.model, static_cast<double>(s.params) / 1e6));
  row("strategy", fmt::format("{} p={} on {} ranks, {} node{}", s.strategy, s.partition_size, s.world_size, s.nodes,
                              s.nodes == 1 ? "" : "s"));
  row("steps", fmt::format("{}{} (S={}, B={}, T={})", s.steps, s.stopped_early ? " (stopped early)" : "", s.grad_accum,
                           s.micro_batch, s.seq_len));
  row("final train loss", fmt::format("{:.4f}", s.final_loss));
  if (std::isfinite(s.eval_loss)) {
    std::string v = fmt::format("{:.4f}", s.eval_loss);
    if (s.entropy_floor >= 0)
      v += fmt::format("  (entropy floor {:.4f}, gap {:+.4f} nats)", s.entropy_floor, s.eval_loss - s.entropy_floor);
    row("eval loss", v);
  }
  row("tokens/s", fmt::format("{:.0f} ({:.0f} per rank)", s.tokens_per_s, s.tokens_per_s / s.world_size));
  row("achieved GFLOP/s per rank", fmt::format("{:.2f}", s.tokens_per_s * s.flops_per_token / s.world_size / 1e9));
  row("comm exposed per step", fmt::format("{:.1f} ms", s.comm_exposed_ms_per_step));
  row("data wait per step", fmt::format("{:.1f} ms", s.data_wait_ms_per_step));
  row("bytes per step (rank 0)", fmt::format("intra-node {}, inter-node {} ({} the traffic model)",
                                             human_bytes(s.intra_node_bytes_per_step), human_bytes(s.inter_node_bytes_per_step),
                                             s.traffic_matches_model ? "equal to" : "DIFFERENT FROM"));
  row("model states per rank", human_bytes(static_cast<double>(s.model_state_bytes_per_rank)));
  row("activations per micro-batch", fmt::format("{}{}", human_bytes(static_cast<double>(s.activation_bytes)),
                                                 s.recompute ? " (recompute)" : ""));
  row("peak RSS (largest rank)", human_bytes(static_cast<double>(s.peak_rss_bytes)));
  return t;
}

}  // namespace mics::train
