// `mics plan`: the cost model on the command line (src/plan/): the memory plan and the
// partition size, a predicted step, all strategies side by side, scaling sweeps with an SVG
// plot, calibration on a measured run, and the published anchors.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "plan/calibrate.hpp"
#include "plan/mesh_plan.hpp"
#include "plan/simulator.hpp"
#include "plan/validation.hpp"
#include "tools/commands.hpp"

namespace mics::tools {

namespace {

struct PlanOptions {
  std::string model = "100b", cluster = "p4d.24xlarge", strategy = "mics", partition = "auto", sweep, svg, timeline;
  int gpus = 512, micro_batch = 1, grad_accum = 1, seq_len = 0, prefetch = 1;
  bool cluster_given = false, recompute = false, json = false, validate = false, mesh_search = false, hierarchical_zero3 = false, fit_latency = true;
  double efficiency = 0.5, intra_efficiency = 0.8, inter_efficiency = 0.8, latency_scale = 1.0, host_hop_us = 0;
  std::string calibrate;
  std::vector<std::string> check;
  double step_quantile = 0.5;
};

Error flag_error(const std::string& message, const std::string& where, const std::string& hint) {
  return Error(ErrorKind::kInvalidArgument, message, {.layer = "plan", .where = where, .hint = hint});
}

plan::CostParams params_of(const PlanOptions& o) {
  plan::CostParams p;
  p.compute_efficiency = o.efficiency;
  p.intra_efficiency = o.intra_efficiency;
  p.inter_efficiency = o.inter_efficiency;
  p.latency_scale = o.latency_scale;
  p.host_hop_s = o.host_hop_us * 1e-6;
  return p;
}

// The spec for one strategy; mics with p "auto" takes the smallest p that fits.
struct Choice {
  plan::RunSpec spec;
  std::string why;  // the memory plan's explanation (auto)
  bool fits = true;
};

Choice choose(const PlanOptions& o, const plan::ModelDesc& model, const plan::Cluster& cluster, int gpus,
              topo::Strategy strategy) {
  Choice c;
  c.spec.model = model;
  c.spec.cluster = cluster;
  c.spec.world = gpus;
  c.spec.strategy = strategy;
  c.spec.micro_batch = o.micro_batch;
  c.spec.grad_accum = o.grad_accum;
  c.spec.seq_len = o.seq_len > 0 ? o.seq_len : model.default_seq_len();
  c.spec.recompute = o.recompute;
  c.spec.prefetch_depth = o.prefetch;
  c.spec.flat_zero3_gather = !o.hierarchical_zero3;
  if (strategy == topo::Strategy::kMics) {
    if (o.partition == "auto") {
      const auto pc = plan::choose_partition_size(model, cluster, gpus, o.micro_batch, c.spec.seq_len, o.recompute);
      c.why = pc.explanation;
      c.fits = pc.partition_size > 0;
      c.spec.partition_size = pc.partition_size > 0 ? pc.partition_size : gpus;
    } else {
      try {
        c.spec.partition_size = std::stoi(o.partition);
      } catch (const std::exception&) {
        throw flag_error(fmt::format("--partition-size '{}' is not a number or auto", o.partition), "--partition-size",
                         "pass a p that divides the GPU count, or auto");
      }
    }
  }
  c.spec = plan::resolve(c.spec);
  if (c.why.empty()) {
    const auto m = plan::memory_plan(model, cluster, gpus, c.spec.partition_size, o.micro_batch, c.spec.seq_len,
                                     o.recompute);
    c.fits = m.total() <= plan::memory_budget(cluster);
  }
  return c;
}

const std::vector<topo::Strategy> kStrategies = {topo::Strategy::kDdp, topo::Strategy::kZero3, topo::Strategy::kMics};

nlohmann::json to_json(const plan::StepPrediction& p, bool fits) {
  return {{"strategy", topo::to_string(p.spec.strategy)},
          {"gpus", p.spec.world},
          {"partition_size", p.partition_size},
          {"replicas", p.replicas},
          {"step_s", p.step_s},
          {"compute_s", p.compute_s},
          {"exposed_comm_s", p.exposed_comm_s},
          {"optimizer_s", p.optimizer_s},
          {"tflops_per_gpu", p.tflops_per_gpu},
          {"mfu", p.mfu},
          {"tokens_per_s", p.tokens_per_s},
          {"memory",
           {{"model_states", p.memory.model_states},
            {"gathered", p.memory.gathered},
            {"gradients", p.memory.grad_buffers},
            {"activations", p.memory.activations},
            {"total", p.memory.total()}}},
          {"fits", fits}};
}

std::string row(const plan::StepPrediction& p, bool fits) {
  return fmt::format("  {:<6} {:>6} {:>10.3f} {:>10.3f} {:>10.3f} {:>8.1f} {:>6.1f}% {:>12.0f} {:>12}{}\n",
                     topo::to_string(p.spec.strategy), p.partition_size, p.step_s, p.compute_s, p.exposed_comm_s,
                     p.tflops_per_gpu, 100 * p.mfu, p.tokens_per_s, plan::bytes_text(static_cast<double>(p.memory.total())),
                     fits ? "" : "  (does not fit)");
}

const char* kHeader = "  strategy    p     step(s) compute(s) exposed(s)  TFLOPS    MFU     tokens/s  memory/GPU\n";

std::vector<int> parse_sweep(const std::string& text, int per_node) {
  const auto dots = text.find("..");
  int lo = 0, hi = 0;
  try {
    if (dots == std::string::npos) throw std::invalid_argument("no ..");
    lo = std::stoi(text.substr(0, dots));
    hi = std::stoi(text.substr(dots + 2));
  } catch (const std::exception&) {
    throw flag_error(fmt::format("--sweep-gpus '{}' is not a range A..B", text), "--sweep-gpus", "write e.g. 16..4096");
  }
  if (lo < 1 || hi < lo) throw flag_error(fmt::format("--sweep-gpus {}: need 1 <= A <= B", text), "--sweep-gpus", "");
  std::vector<int> out;
  for (long g = lo; g <= hi; g *= 2)
    if (g <= per_node ? per_node % g == 0 : g % per_node == 0) out.push_back(static_cast<int>(g));
  if (out.empty())
    throw flag_error(fmt::format("--sweep-gpus {} has no GPU count that fills whole nodes of {}", text, per_node),
                     "--sweep-gpus", "start at a power of two");
  return out;
}

// A line plot of TFLOPS per GPU against GPUs (log2 axis), one line per strategy.
void write_svg(const std::string& path, const std::string& title, const std::vector<int>& gpus,
               const std::vector<std::vector<double>>& series, const std::vector<std::string>& names) {
  const double W = 720, H = 440, L = 70, R = 150, T = 40, B = 50;
  double ymax = 0;
  for (const auto& s : series)
    for (double v : s) ymax = std::max(ymax, v);
  ymax = ymax > 0 ? ymax * 1.1 : 1;
  const double x0 = std::log2(gpus.front()), x1 = std::max(x0 + 1, std::log2(gpus.back()));
  const auto X = [&](double g) { return L + (std::log2(g) - x0) / (x1 - x0) * (W - L - R); };
  const auto Y = [&](double v) { return H - B - v / ymax * (H - T - B); };
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"14\">{}</text>\n",
      W, H, L, title);
  svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
  svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", L, T, L, H - B);
  for (int g : gpus)
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", X(g), H - B + 16, g);
  for (int i = 0; i <= 5; ++i) {
    const double v = ymax * i / 5;
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.0f}</text>\n", L - 6, Y(v) + 4, v);
    svg += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n", L, Y(v), W - R, Y(v));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">GPUs</text>\n", (L + W - R) / 2, H - 12);
  svg += fmt::format("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">TFLOPS per GPU</text>\n",
                     (T + H - B) / 2, (T + H - B) / 2);
  for (size_t s = 0; s < series.size(); ++s) {
    std::string pts;
    for (size_t i = 0; i < gpus.size(); ++i) pts += fmt::format("{:.1f},{:.1f} ", X(gpus[i]), Y(series[s][i]));
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n", colors[s % 4], pts);
    for (size_t i = 0; i < gpus.size(); ++i)
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", X(gpus[i]), Y(series[s][i]),
                         colors[s % 4]);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n", W - R + 10, T + 20 + 18 * s, colors[s % 4],
                       names[s]);
  }
  svg += "</svg>\n";
  std::ofstream out(path);
  if (!out) throw Error(ErrorKind::kIo, fmt::format("cannot write {}", path), {.layer = "plan", .where = "--svg", .hint = "check the directory exists"});
  out << svg;
}

void write_timeline(const std::string& path, const plan::StepPrediction& p) {
  nlohmann::json events = nlohmann::json::array();
  for (const auto& e : p.timeline)
    events.push_back({{"name", e.what},
                      {"ph", "X"},
                      {"ts", e.start * 1e6},
                      {"dur", (e.end - e.start) * 1e6},
                      {"pid", 0},
                      {"tid", plan::to_string(e.stream)},
                      {"args", {{"micro_step", e.micro_step}}}});
  std::ofstream out(path);
  if (!out) throw Error(ErrorKind::kIo, fmt::format("cannot write {}", path), {.layer = "plan", .where = "--timeline", .hint = "check the directory exists"});
  out << nlohmann::json{{"traceEvents", events}}.dump() << "\n";
}

nlohmann::json mesh_json(const plan::MeshPrediction& m) {
  return {{"t", m.layout.t},
          {"s", m.layout.s},
          {"p", m.layout.p},
          {"r", m.layout.r},
          {"sequence_parallel", m.layout.sequence_parallel},
          {"step_s", m.step_s},
          {"compute_s", m.compute_s},
          {"tensor_s", m.tensor_s},
          {"pipeline_p2p_s", m.pipeline_p2p_s},
          {"bubble_s", m.bubble_s},
          {"bubble_fraction", m.bubble_fraction},
          {"data_exposed_s", m.data_exposed_s},
          {"optimizer_s", m.optimizer_s},
          {"tokens_per_s", m.tokens_per_s},
          {"tflops_per_gpu", m.tflops_per_gpu},
          {"intra_bytes_per_step", m.intra_bytes},
          {"inter_bytes_per_step", m.inter_bytes},
          {"memory_total", m.memory.total()},
          {"activation_bytes", m.memory.activations},
          {"fits", m.fits}};
}

std::string mesh_row(const char* label, const plan::MeshPrediction& m) {
  return fmt::format("  {:<10} {:<22} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>8.1f} {:>12}{}\n", label,
                     m.layout.describe(), m.step_s, m.compute_s, m.tensor_s, m.pipeline_p2p_s, m.bubble_s,
                     m.data_exposed_s, m.tflops_per_gpu, plan::bytes_text(static_cast<double>(m.memory.total())),
                     m.fits ? "" : "  (does not fit)");
}

int run_calibrate(const PlanOptions& o) {
  // A measured `mics train` or engine-bench run is this host's CPU engine unless --cluster says
  // otherwise.
  const plan::Cluster cluster = plan::find_cluster(o.cluster_given ? o.cluster : "host");
  const plan::MeasuredRun run = plan::read_run(o.calibrate, o.step_quantile);
  const plan::Calibration cal = plan::calibrate(run, cluster, params_of(o), o.fit_latency);
  nlohmann::json j = {{"calibrated_on", run.path},
                      {"compute_efficiency", cal.params.compute_efficiency},
                      {"inter_efficiency", cal.params.inter_efficiency},
                      {"intra_efficiency", cal.params.intra_efficiency},
                      {"latency_scale", cal.params.latency_scale},
                      {"host_hop_s", cal.params.host_hop_s},
                      {"predicted_step_s", cal.prediction.step_s},
                      {"measured_step_s", run.step_s},
                      {"step_quantile", o.step_quantile}};
  if (!o.json) std::printf("%s", cal.report.c_str());
  std::vector<plan::MeasuredRun> others;
  for (const auto& other : o.check)  // an engine-bench file: each of its strategies
    for (auto& m : plan::read_runs(other, o.step_quantile)) others.push_back(std::move(m));
  for (const auto& m : others) {
    const plan::StepPrediction p = plan::simulate(plan::run_spec(m, cluster), cal.params);
    const double err = p.step_s / m.step_s - 1;
    j["checks"].push_back({{"run", m.path}, {"predicted_step_s", p.step_s}, {"measured_step_s", m.step_s}, {"error", err}});
    if (!o.json)
      std::printf("  check %s (%s %d ranks on %d nodes, p=%d, S=%d, B=%d): predicted %.1f ms, measured %.1f ms (%+.1f%%)\n",
                  m.path.c_str(), m.strategy.c_str(), m.world, m.nodes, m.partition_size, m.grad_accum, m.micro_batch,
                  p.step_s * 1e3, m.step_s * 1e3, 100 * err);
  }
  if (o.json) std::printf("%s\n", j.dump(2).c_str());
  return 0;
}

int run_plan(const PlanOptions& o) {
  if (o.validate) {
    const auto fams = plan::validate_anchors();
    std::printf("%s", plan::format_anchor_table(fams).c_str());
    return 0;
  }
  if (!o.calibrate.empty()) return run_calibrate(o);
  const plan::ModelDesc model = plan::find_model(o.model);
  const plan::Cluster cluster = plan::find_cluster(o.cluster);
  const plan::CostParams params = params_of(o);
  const topo::Strategy chosen = topo::parse_strategy(o.strategy);

  if (!o.sweep.empty()) {
    const auto gpus = parse_sweep(o.sweep, cluster.gpus_per_node);
    std::vector<std::vector<double>> tflops(kStrategies.size());
    std::vector<std::string> names;
    nlohmann::json j = nlohmann::json::array();
    if (!o.json)
      std::printf("mics plan: %s (%s) on %s, micro-batch %d x %d, S=%d: weak scaling (fixed batch per GPU)\n",
                  model.name.c_str(), model.describe().c_str(), cluster.name.c_str(), o.micro_batch,
                  o.seq_len > 0 ? o.seq_len : model.default_seq_len(), o.grad_accum);
    for (size_t s = 0; s < kStrategies.size(); ++s) {
      names.emplace_back(topo::to_string(kStrategies[s]));
      if (!o.json) std::printf("\n  %-6s %6s %6s %10s %8s %12s %10s %10s\n", names.back().c_str(), "GPUs", "p",
                               "step(s)", "TFLOPS", "tokens/s", "weak eff", "memory");
      double base = 0;
      for (int g : gpus) {
        const Choice c = choose(o, model, cluster, g, kStrategies[s]);
        const auto p = plan::simulate(c.spec, params);
        const double per_gpu = p.tokens_per_s / g;
        if (base == 0) base = per_gpu;
        tflops[s].push_back(p.tflops_per_gpu);
        auto row_j = to_json(p, c.fits);
        row_j["weak_scaling_efficiency"] = per_gpu / base;
        j.push_back(row_j);
        if (!o.json)
          std::printf("  %-6s %6d %6d %10.3f %8.1f %12.0f %9.1f%% %10s%s\n", "", g, p.partition_size, p.step_s,
                      p.tflops_per_gpu, p.tokens_per_s, 100 * per_gpu / base,
                      plan::bytes_text(static_cast<double>(p.memory.total())).c_str(), c.fits ? "" : " (does not fit)");
      }
    }
    if (!o.svg.empty()) {
      write_svg(o.svg, fmt::format("{} on {}: TFLOPS per GPU (weak scaling)", model.name, cluster.name), gpus, tflops,
                names);
      if (!o.json) std::printf("\nplot: %s\n", o.svg.c_str());
    }
    if (o.json) std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  const Choice main_choice = choose(o, model, cluster, o.gpus, chosen);
  const auto pred = plan::simulate(main_choice.spec, params);
  if (!o.timeline.empty()) write_timeline(o.timeline, pred);
  nlohmann::json j;
  if (o.json) {
    j["model"] = {{"name", model.name}, {"describe", model.describe()}, {"params", model.params()}, {"source", model.source}};
    j["cluster"] = cluster.name;
    j["cost_params"] = {{"compute_efficiency", params.compute_efficiency},
                        {"intra_efficiency", params.intra_efficiency},
                        {"inter_efficiency", params.inter_efficiency}};
    j["prediction"] = to_json(pred, main_choice.fits);
  } else {
    const int n = std::min(o.gpus, cluster.gpus_per_node);
    std::printf("mics plan: %s (%s) on %d x %s (%s)\n", model.name.c_str(), model.describe().c_str(), o.gpus / n,
                cluster.name.c_str(), cluster.description.c_str());
    if (model.is_mlp())  // no sequence: the "tokens" below are samples
      std::printf("  batch: %d GPUs x %d micro-steps x %d samples\n", o.gpus, o.grad_accum, o.micro_batch);
    else
      std::printf("  batch: %d GPUs x %d micro-steps x %d sequences x %d tokens%s\n", o.gpus, o.grad_accum,
                  o.micro_batch, main_choice.spec.seq_len, o.recompute ? ", activation recompute" : "");
    std::printf("  cost model: compute efficiency %.2f of %.0f TFLOPS; bandwidth efficiency intra %.2f, inter %.2f\n",
                params.compute_efficiency, cluster.peak_flops / 1e12, params.intra_efficiency, params.inter_efficiency);
    std::printf("\nmemory plan per GPU (budget %s = 90%% of %s):\n",
                plan::bytes_text(static_cast<double>(plan::memory_budget(cluster))).c_str(),
                plan::bytes_text(cluster.memory_bytes).c_str());
    if (!main_choice.why.empty()) {
      std::printf("%s", main_choice.why.c_str());
      std::printf(main_choice.fits ? "  -> p=%d: the smallest partition that fits keeps gathers on the fewest GPUs\n"
                                   : "  -> no p fits; showing p=%d (use --recompute, a smaller --micro-batch or more GPUs)\n",
                  pred.partition_size);
    } else {
      std::printf("  p=%d: %s%s\n", pred.partition_size, pred.memory.describe().c_str(),
                  main_choice.fits ? "" : "  (does not fit)");
    }
    std::printf("\npredicted step (%s, p=%d, r=%d):\n", topo::to_string(chosen), pred.partition_size, pred.replicas);
    std::printf("  step %.3f s = compute %.3f s (optimizer %.3f s) + exposed communication %.3f s\n", pred.step_s,
                pred.compute_s, pred.optimizer_s, pred.exposed_comm_s);
    std::printf("  %.1f TFLOPS per GPU (MFU %.1f%%), %.0f tokens/s\n", pred.tflops_per_gpu, 100 * pred.mfu,
                pred.tokens_per_s);
    std::printf("\nall strategies:\n%s", kHeader);
  }
  for (auto s : kStrategies) {
    const Choice c = choose(o, model, cluster, o.gpus, s);
    const auto p = plan::simulate(c.spec, params);
    if (o.json)
      j["strategies"].push_back(to_json(p, c.fits));
    else
      std::printf("%s", row(p, c.fits).c_str());
  }
  if (o.mesh_search) {
    plan::MeshSpec ms{model, cluster, o.gpus, o.micro_batch, o.grad_accum, main_choice.spec.seq_len, o.recompute};
    const plan::MeshSearch found = plan::search_mesh(ms, params);
    if (o.json) {
      j["mesh_search"] = {{"layouts_tried", found.layouts_tried}, {"layouts_fit", found.layouts_fit},
                          {"pure_mics", mesh_json(found.pure_mics)}};
      for (const auto& m : found.layouts) j["mesh_search"]["layouts"].push_back(mesh_json(m));
      if (found.best.fits) j["mesh_search"]["best"] = mesh_json(found.best);
    } else {
      std::printf("\nmesh search over (t, s, p) (closed forms, docs/PLANNING.md; %d layouts, %d fit):\n",
                  found.layouts_tried, found.layouts_fit);
      std::printf("  %-10s %-22s %9s %9s %9s %9s %9s %9s %8s %12s\n", "", "layout", "step(s)", "compute", "tensor",
                  "p2p", "bubble", "data exp", "TFLOPS", "memory/GPU");
      if (found.best.fits) std::printf("%s", mesh_row("fastest", found.best).c_str());
      else std::printf("  fastest    none fits (use --recompute, a smaller --micro-batch or more GPUs)\n");
      std::printf("%s", mesh_row("pure MiCS", found.pure_mics).c_str());
      if (found.best.fits && found.pure_mics.step_s > 0)
        std::printf("  -> %s is %.2fx the pure-MiCS layout's speed\n", found.best.layout.describe().c_str(),
                    found.pure_mics.step_s / found.best.step_s);
    }
  }
  if (o.json) std::printf("%s\n", j.dump(2).c_str());
  return 0;
}

}  // namespace

Runner add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* sub = app.add_subcommand("plan", "cost model: memory plan, partition size, predicted step and scaling");
  sub->add_option("--model", o->model, "model: 1.3b, 6.7b, 13b, 100b, 175b, roberta-10b/50b, gpt2-*, tiny, L..H..C..V..T.. or "
                  "mlpL..W.. (the engine bench's MLP)")
      ->capture_default_str();
  CLI::Option* cluster_flag = sub->add_option("--cluster", o->cluster, "instance type, host, or host:BENCH.json (mics bench --json)")
      ->capture_default_str();
  sub->add_option("--gpus", o->gpus, "accelerators (whole nodes)")->capture_default_str();
  sub->add_option("--strategy", o->strategy, "ddp, zero3 or mics (the one explained; the table shows all)")
      ->capture_default_str();
  sub->add_option("--partition-size", o->partition, "MiCS partition size p, or auto")->capture_default_str();
  sub->add_option("--micro-batch", o->micro_batch, "sequences per GPU per micro-step")->capture_default_str();
  sub->add_option("--grad-accum", o->grad_accum, "micro-steps per optimizer step (S)")->capture_default_str();
  sub->add_option("--seq-len", o->seq_len, "tokens per sequence (0: the model's context)")->capture_default_str();
  sub->add_flag("--recompute", o->recompute, "full activation recomputation");
  sub->add_option("--prefetch", o->prefetch, "gathers in flight ahead of compute")->capture_default_str();
  sub->add_flag("--hierarchical-zero3", o->hierarchical_zero3, "ZeRO-3 with the hierarchical all-gather (as this engine)");
  sub->add_option("--efficiency", o->efficiency, "achieved/peak FLOP/s of the compute")->capture_default_str();
  sub->add_option("--intra-efficiency", o->intra_efficiency, "achieved/nominal intra-node bandwidth")->capture_default_str();
  sub->add_option("--inter-efficiency", o->inter_efficiency, "achieved/nominal inter-node bandwidth")->capture_default_str();
  sub->add_option("--latency-scale", o->latency_scale, "multiplies both rails' hop latency (as --calibrate fits it)")
      ->capture_default_str();
  sub->add_option("--sweep-gpus", o->sweep, "weak-scaling sweep over powers of two, e.g. 16..4096");
  sub->add_option("--svg", o->svg, "with --sweep-gpus: write the TFLOPS-per-GPU plot here");
  sub->add_option("--timeline", o->timeline, "write the predicted step as a Chrome trace (JSON)");
  sub->add_flag("--json", o->json, "print JSON");
  sub->add_flag("--mesh-search", o->mesh_search,
                "also search tensor (t) x pipeline (s) x partition (p) layouts: the fastest that fits beside pure MiCS");
  sub->add_option("--host-hop-us", o->host_hop_us,
                  "CPU engine: microseconds added to every ring hop on both rails (a scheduling wait; default 0)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--calibrate", o->calibrate, "fit the efficiencies to a measured run: a `mics train --out` directory, or a "
                  "`mics engine-bench --json` file (FILE#STRATEGY when it holds several)");
  sub->add_flag("--fit-latency,!--no-fit-latency", o->fit_latency,
                "with --calibrate: fit the rails' hop latency to the measured exposed communication (default on)");
  sub->add_option("--check", o->check, "with --calibrate: runs to predict with the fitted parameters (every strategy of an "
                  "engine-bench file)");
  sub->add_option("--step-quantile", o->step_quantile,
                  "with --calibrate: the step time that stands for a run, as a quantile of its steps (0.5: the median; "
                  "0.25 reads a shared host's undisturbed level)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  sub->add_flag("--validate", o->validate, "the published anchors: fitted and predicted (docs/PLANNING.md)");
  return [o, cluster_flag] {
    o->cluster_given = cluster_flag->count() > 0;
    return run_plan(*o);
  };
}

}  // namespace mics::tools
