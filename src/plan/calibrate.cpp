// Fitting the cost model to a measured run (see calibrate.hpp).
#include "plan/calibrate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "plan/validation.hpp"

namespace mics::plan {

namespace {

Error run_error(const std::string& message, const std::string& path) {
  return Error(ErrorKind::kInvalidArgument, message,
               {.layer = "plan", .where = "--calibrate " + path,
                .hint = "pass a run directory of `mics train --out DIR` (or its metrics.jsonl) that finished, or the "
                        "file of `mics engine-bench --json FILE`"});
}

// The q-quantile with linear interpolation between neighbours (q = 0.5: the median, the mean of
// the middle two of an even count).
double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

}  // namespace

namespace {

// `mics train`'s metrics.jsonl (train/metrics.cpp).
MeasuredRun read_train_metrics(const std::string& path, const std::string& file, double step_quantile) {
  MeasuredRun run;
  run.step_quantile = step_quantile;
  run.path = file;
  run.kind = "train";
  std::ifstream in(run.path);
  if (!in)
    throw Error(ErrorKind::kIo, fmt::format("cannot read {}", run.path),
                {.layer = "plan", .where = "--calibrate", .hint = "run `mics train --out DIR` first and pass DIR"});
  std::vector<double> steps, exposed;
  nlohmann::json summary;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw run_error(fmt::format("{}:{} is not JSON: {}", run.path, line_no, e.what()), path);
    }
    if (j.value("event", "") == "step" && !j.value("skipped", false)) {
      steps.push_back(j.value("step_ms", 0.0) / 1e3);
      exposed.push_back(j.value("comm_exposed_ms", 0.0) / 1e3);
    } else if (j.value("event", "") == "summary") {
      summary = j;
    }
  }
  if (summary.is_null()) throw run_error(fmt::format("{} has no summary record", run.path), path);
  if (steps.empty()) throw run_error(fmt::format("{} has no step records", run.path), path);
  try {
    run.model = summary.at("model").get<std::string>();
    run.strategy = summary.at("strategy").get<std::string>();
    run.world = summary.at("world_size").get<int>();
    run.nodes = summary.at("nodes").get<int>();
    run.partition_size = summary.at("partition_size").get<int>();
    run.grad_accum = summary.at("grad_accum").get<int>();
    run.micro_batch = summary.at("micro_batch").get<int>();
    run.seq_len = summary.at("seq_len").get<int>();
    run.steps = summary.at("steps").get<int>();
    run.recompute = summary.value("recompute", false);
    run.tokens_per_s = summary.value("tokens_per_s", 0.0);
    run.model_state_bytes = summary.value("model_state_bytes_per_rank", uint64_t{0});
    run.activation_bytes = summary.value("activation_bytes", uint64_t{0});
    run.host_cores = summary.value("host_cores", 0);
    run.ranks_on_host = summary.value("ranks_on_host", 0);
    run.compute_threads = summary.value("compute_threads", 0);
  } catch (const std::exception& e) {
    throw run_error(fmt::format("{}: the summary lacks a field: {}", run.path, e.what()), path);
  }
  if (steps.size() > 1) {
    steps.erase(steps.begin());
    exposed.erase(exposed.begin());
  }
  run.step_s = quantile(steps, step_quantile);
  run.exposed_comm_s = quantile(exposed, step_quantile);
  return run;
}

// `mics engine-bench --json`: one run per strategy result (see calibrate.hpp).
std::vector<MeasuredRun> read_engine_bench(const std::string& path, const std::string& file, const nlohmann::json& j,
                                           double step_quantile) {
  std::vector<MeasuredRun> runs;
  if (!j.contains("world_size"))
    throw run_error(fmt::format("{} is an engine-bench file without its layout (no world_size): written before "
                                "`mics engine-bench --json` recorded it; run the bench again",
                                file),
                    path);
  try {
    MeasuredRun base;
    base.kind = "engine-bench";
    base.step_quantile = step_quantile;
    base.model = j.at("model").get<std::string>();
    base.world = j.at("world_size").get<int>();
    base.nodes = j.at("nodes").get<int>();
    base.grad_accum = j.at("grad_accum").get<int>();
    base.micro_batch = j.at("micro_batch").get<int>();
    base.seq_len = 1;  // a sample is the MLP's token
    base.steps = j.at("steps").get<int>();
    base.activation_bytes = j.value("activation_bytes", uint64_t{0});
    base.host_cores = j.value("host_cores", 0);
    base.ranks_on_host = j.value("ranks_on_host", 0);
    base.compute_threads = j.value("compute_threads", 0);
    // The plan's MLP must be the bench's: its parameters and FLOPs, as the bench's model::Mlp
    // counted them, against the description's closed forms.
    const ModelDesc desc = find_model(base.model);
    if (!desc.is_mlp()) throw run_error(fmt::format("{}: model {} is not an MLP", file, base.model), path);
    const uint64_t params = j.at("params").get<uint64_t>();
    const double flops = j.at("flops_per_sample").get<double>();
    if (params != desc.params() || std::abs(flops - desc.flops_per_token(1)) > 1e-9 * flops)
      throw run_error(fmt::format("{}: the bench's MLP has {} parameters and {:.0f} FLOPs per sample, the plan's {} "
                                  "{} and {:.0f}: the model description and the engine disagree",
                                  file, params, flops, base.model, desc.params(), desc.flops_per_token(1)),
                      path);
    for (const auto& r : j.at("results")) {
      MeasuredRun run = base;
      const std::string name = r.at("strategy").get<std::string>();
      run.path = file + "#" + name;
      run.strategy = name.substr(0, name.find(':'));
      run.partition_size = r.at("p").get<int>();
      run.model_state_bytes = r.value("model_state_bytes_per_rank", uint64_t{0});
      const auto steps = r.at("step_ms").get<std::vector<double>>();
      const auto exposed = r.at("exposed_ms").get<std::vector<double>>();
      if (steps.empty() || steps.size() != exposed.size())
        throw run_error(fmt::format("{}: {} has {} step times and {} exposed times", file, name, steps.size(),
                                    exposed.size()),
                        path);
      run.step_s = quantile(steps, step_quantile) / 1e3;
      run.exposed_comm_s = quantile(exposed, step_quantile) / 1e3;
      run.tokens_per_s = static_cast<double>(run.world) * run.grad_accum * run.micro_batch / run.step_s;
      runs.push_back(run);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw run_error(fmt::format("{}: the engine-bench record lacks a field: {}", file, e.what()), path);
  }
  if (runs.empty()) throw run_error(fmt::format("{} holds no results", file), path);
  return runs;
}

}  // namespace

std::string step_statistic(double step_quantile) {
  if (step_quantile == 0.5) return "median";
  if (step_quantile == 0) return "fastest step";
  return fmt::format("{:g} quantile", step_quantile);
}

std::vector<MeasuredRun> read_runs(const std::string& path, double step_quantile) {
  namespace fs = std::filesystem;
  if (!(step_quantile >= 0 && step_quantile <= 1))
    throw Error(
        ErrorKind::kInvalidArgument, fmt::format("step quantile {} is outside [0, 1]", step_quantile),
        {.layer = "plan", .where = "--step-quantile", .hint = "0.5 is the median (the default), 0 the fastest step"});
  if (fs::is_directory(path)) return {read_train_metrics(path, path + "/metrics.jsonl", step_quantile)};
  // FILE#STRATEGY picks one strategy of an engine-bench file.
  std::string file = path, pick;
  if (const size_t hash = path.rfind('#'); !fs::exists(path) && hash != std::string::npos) {
    file = path.substr(0, hash);
    pick = path.substr(hash + 1);
  }
  std::ifstream in(file);
  if (!in)
    throw Error(ErrorKind::kIo, fmt::format("cannot read {}", file),
                {.layer = "plan", .where = "--calibrate",
                 .hint = "run `mics train --out DIR` or `mics engine-bench --json FILE` first and pass DIR or FILE"});
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A metrics file is JSON lines (one object per line); an engine-bench file is one object.
  nlohmann::json whole = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  std::vector<MeasuredRun> runs;
  if (whole.is_object() && whole.contains("results")) {
    if (whole.value("kind", "") != "mics engine-bench" && whole.contains("kind"))
      throw run_error(fmt::format("{} is a '{}' file, not `mics engine-bench --json`", file,
                                  whole.value("kind", "")),
                      path);
    runs = read_engine_bench(path, file, whole, step_quantile);
  } else if (whole.is_discarded() || whole.contains("event")) {
    if (text.find("\"event\"") == std::string::npos)
      throw run_error(fmt::format("{} is neither `mics train` metrics (JSON lines with \"event\" records) nor a "
                                  "`mics engine-bench --json` file",
                                  file),
                      path);
    runs = {read_train_metrics(path, file, step_quantile)};
  } else {
    throw run_error(fmt::format("{} is JSON, but neither `mics train` metrics nor a `mics engine-bench --json` file "
                                "(no \"results\", no \"event\")",
                                file),
                    path);
  }
  if (pick.empty()) return runs;
  for (const auto& r : runs)
    if (r.path == file + "#" + pick) return {r};
  std::vector<std::string> names;
  for (const auto& r : runs) names.push_back(r.path);
  throw run_error(fmt::format("{} has no strategy '{}'; it holds: {}", file, pick, fmt::join(names, ", ")), path);
}

MeasuredRun read_run(const std::string& path, double step_quantile) {
  auto runs = read_runs(path, step_quantile);
  if (runs.size() == 1) return runs.front();
  std::vector<std::string> names;
  for (const auto& r : runs) names.push_back(r.path);
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("{} holds {} runs; calibrate on one: {}", path, runs.size(), fmt::join(names, ", ")),
              {.layer = "plan", .where = "--calibrate " + path, .hint = "append #STRATEGY to the file, as listed"});
}

RunSpec run_spec(const MeasuredRun& run, Cluster cluster) {
  cluster.gpus_per_node = std::max(1, run.world / std::max(1, run.nodes));
  if (cluster.cpu_engine && run.host_cores > 0) cluster.host_cores = run.host_cores;
  RunSpec s;
  s.model = find_model(run.model);
  s.cluster = cluster;
  s.world = run.world;
  s.strategy = topo::parse_strategy(run.strategy);
  s.partition_size = run.partition_size;
  s.micro_batch = run.micro_batch;
  s.grad_accum = run.grad_accum;
  s.seq_len = run.seq_len;
  s.recompute = run.recompute;
  s.flat_zero3_gather = false;  // the engine gathers hierarchically
  s.ranks_on_host = run.ranks_on_host;
  return s;
}

Calibration calibrate(const MeasuredRun& run, const Cluster& cluster, const CostParams& prior, bool fit_latency) {
  Calibration cal;
  cal.params = prior;
  const RunSpec spec = run_spec(run, cluster);
  // An oversubscribed host (CPU engine, more ranks than cores): the simulator runs every rank's
  // compute at its fair share of a core and the step as compute plus communication (the cores
  // are the bottleneck). The run's "exposed" time is then mostly the other ranks' compute, so
  // the compute rate is fitted to the whole step, and nothing else is fitted: a hop's cost is
  // the rails' own (mics bench on this host), and one step time cannot tell two parameters apart.
  const double share = simulate(spec, cal.params).core_share;
  const bool oversubscribed = share < 1;
  const double measured_compute = oversubscribed ? run.step_s : std::max(1e-9, run.step_s - run.exposed_comm_s);
  const double hop_target = run.exposed_comm_s;
  // The CPU engine's hops wait for a core (host_hop_s, the same on both rails); an
  // accelerator's hops are the wire's, scaled.
  const bool host_hop = cluster.cpu_engine;
  double& hop = host_hop ? cal.params.host_hop_s : cal.params.latency_scale;
  const auto with = [&](double compute, double hop_value) {
    CostParams q = cal.params;
    q.compute_efficiency = compute;
    (host_hop ? q.host_hop_s : q.latency_scale) = hop_value;
    return simulate(spec, q);
  };
  std::string net_note = fmt::format("rails: intra {:.2f} GB/s, inter {:.2f} GB/s per node; hop latency intra {:.0f} us, "
                                     "inter {:.0f} us",
                                     cluster.intra.bandwidth * cal.params.intra_efficiency / 1e9,
                                     cluster.inter.bandwidth * cal.params.inter_efficiency / 1e9,
                                     cluster.intra.latency * cal.params.latency_scale * 1e6,
                                     cluster.inter.latency * cal.params.latency_scale * 1e6);
  // Compute first, then the hop, then again (the exposed time shifts with the compute).
  for (int round = 0; round < 6; ++round) {
    cal.params.compute_efficiency = solve_monotonic(
        [&](double e) {
          const StepPrediction p = with(e, hop);
          return oversubscribed ? p.step_s : p.compute_s;
        },
        measured_compute, 1e-6, 10.0);
    if (!fit_latency || oversubscribed || run.exposed_comm_s <= 0) continue;
    const auto exposed = [&](double x) { return with(cal.params.compute_efficiency, x).exposed_comm_s; };
    const double lo = host_hop ? 1e-7 : 1e-3, hi = host_hop ? 1.0 : 1e4;  // seconds, or a scale
    if (exposed(lo) <= hop_target && exposed(hi) >= hop_target) {
      hop = solve_monotonic(exposed, hop_target, lo, hi);
      net_note = fmt::format("{} fitted to the {}: hop latency intra {:.0f} us, inter {:.0f} us "
                             "(bandwidths kept: intra {:.2f} GB/s, inter {:.2f} GB/s per node)",
                             host_hop ? fmt::format("a hop's wait for a core, {:.0f} us,", cal.params.host_hop_s * 1e6)
                                      : fmt::format("hop latency x{:.1f}", cal.params.latency_scale),
                             "exposed communication",
                             (cluster.intra.latency * cal.params.latency_scale + cal.params.host_hop_s) * 1e6,
                             (cluster.inter.latency * cal.params.latency_scale + cal.params.host_hop_s) * 1e6,
                             cluster.intra.bandwidth * cal.params.intra_efficiency / 1e9,
                             cluster.inter.bandwidth * cal.params.inter_efficiency / 1e9);
    } else {
      net_note += " (no latency reproduces the measured exposed communication; kept)";
    }
  }
  cal.prediction = simulate(spec, cal.params);
  cal.report = fmt::format(
      "calibrated on {} ({} {} ranks on {} nodes, p={}, S={}, B={}, T={}):\n"
      "  compute efficiency {:.4f} of {:.0f} GFLOP/s per rank{} = {:.2f} GFLOP/s achieved\n  {}\n"
      "  host: {} ranks of {} compute threads on {} cores{}\n"
      "  step: predicted {:.1f} ms, measured {:.1f} ms ({}) ({:+.1f}%); exposed communication predicted {:.1f} ms, "
      "measured {:.1f} ms\n",
      run.path, run.model, run.world, run.nodes, run.partition_size, run.grad_accum, run.micro_batch, run.seq_len,
      cal.params.compute_efficiency, cluster.peak_flops / 1e9, oversubscribed ? " (a whole core's)" : "",
      cluster.peak_flops * cal.params.compute_efficiency / 1e9, net_note, run.ranks_on_host, run.compute_threads,
      spec.cluster.host_cores,
      oversubscribed ? fmt::format(": each rank computes at {:.2f} of a core, and its communication adds to the step "
                                   "(CPU-bound: the compute rate is fitted to the whole step)",
                                   share)
                     : std::string(),
      cal.prediction.step_s * 1e3, run.step_s * 1e3, step_statistic(run.step_quantile),
      100 * (cal.prediction.step_s / run.step_s - 1), cal.prediction.exposed_comm_s * 1e3, run.exposed_comm_s * 1e3);
  return cal;
}

}  // namespace mics::plan
