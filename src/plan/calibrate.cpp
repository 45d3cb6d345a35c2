// Fitting the cost model to a measured run (see calibrate.hpp).
#include "plan/calibrate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "plan/validation.hpp"

namespace mics::plan {

namespace {

Error run_error(const std::string& message, const std::string& path) {
  return Error(ErrorKind::kInvalidArgument, message,
               {.layer = "plan", .where = "--calibrate " + path,
                .hint = "pass a run directory of `mics train --out DIR` (or its metrics.jsonl) that finished"});
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

}  // namespace

MeasuredRun read_run(const std::string& path) {
  MeasuredRun run;
  run.path = std::filesystem::is_directory(path) ? path + "/metrics.jsonl" : path;
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
  run.step_s = median(steps);
  run.exposed_comm_s = median(exposed);
  return run;
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
  return s;
}

Calibration calibrate(const MeasuredRun& run, const Cluster& cluster, const CostParams& prior, bool fit_latency) {
  Calibration cal;
  cal.params = prior;
  const RunSpec spec = run_spec(run, cluster);
  const double measured_compute = std::max(1e-9, run.step_s - run.exposed_comm_s);
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
        [&](double e) { return with(e, hop).compute_s; }, measured_compute, 1e-6, 10.0);
    if (!fit_latency || run.exposed_comm_s <= 0) continue;
    const auto exposed = [&](double x) { return with(cal.params.compute_efficiency, x).exposed_comm_s; };
    const double lo = host_hop ? 1e-7 : 1e-3, hi = host_hop ? 1.0 : 1e4;  // seconds, or a scale
    if (exposed(lo) <= run.exposed_comm_s && exposed(hi) >= run.exposed_comm_s) {
      hop = solve_monotonic(exposed, run.exposed_comm_s, lo, hi);
      net_note = fmt::format("{} fitted to the exposed communication: hop latency intra {:.0f} us, inter {:.0f} us "
                             "(bandwidths kept: intra {:.2f} GB/s, inter {:.2f} GB/s per node)",
                             host_hop ? fmt::format("a hop's wait for a core, {:.0f} us,", cal.params.host_hop_s * 1e6)
                                      : fmt::format("hop latency x{:.1f}", cal.params.latency_scale),
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
      "  compute efficiency {:.4f} of {:.0f} GFLOP/s per rank = {:.2f} GFLOP/s achieved\n  {}\n"
      "  host: {} ranks of {} compute threads on {} cores\n"
      "  step: predicted {:.1f} ms, measured {:.1f} ms (median) ({:+.1f}%); exposed communication predicted {:.1f} ms, "
      "measured {:.1f} ms\n",
      run.path, run.model, run.world, run.nodes, run.partition_size, run.grad_accum, run.micro_batch, run.seq_len,
      cal.params.compute_efficiency, cluster.peak_flops / 1e9, cluster.peak_flops * cal.params.compute_efficiency / 1e9,
      net_note, run.ranks_on_host, run.compute_threads, spec.cluster.host_cores, cal.prediction.step_s * 1e3, run.step_s * 1e3, 100 * (cal.prediction.step_s / run.step_s - 1),
      cal.prediction.exposed_comm_s * 1e3, run.exposed_comm_s * 1e3);
  return cal;
}

}  // namespace mics::plan
