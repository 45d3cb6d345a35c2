// The published anchors, fitted and predicted (see validation.hpp).
#include "plan/validation.hpp"

#include <fmt/format.h>

#include <cmath>

namespace mics::plan {

double solve_monotonic(const std::function<double(double)>& f, double target, double lo, double hi) {
  const bool increasing = f(hi) > f(lo);
  for (int i = 0; i < 100; ++i) {
    const double mid = std::sqrt(lo * hi);  // geometric: parameters are positive scales
    if ((f(mid) < target) == increasing)
      lo = mid;
    else
      hi = mid;
  }
  return std::sqrt(lo * hi);
}

namespace {

AnchorFamily zero3_family() {
  AnchorFamily fam;
  fam.name = "DeepSpeed ZeRO-3, p4d.24xlarge";
  const auto spec = [](const std::string& model, int gpus) {
    RunSpec s;
    s.model = find_model(model);
    s.cluster = find_cluster("p4d.24xlarge");
    s.world = gpus;
    s.strategy = topo::Strategy::kZero3;
    s.micro_batch = 16;
    s.seq_len = 512;
    s.recompute = true;
    s.flat_zero3_gather = true;
    return s;
  };
  struct Point {
    std::string model;
    int gpus;
    double tflops;
  };
  const std::vector<Point> points = {{"roberta-50b", 64, 116.06}, {"roberta-50b", 256, 108.0}, {"roberta-10b", 64, 92.07}};
  CostParams params;  // network at the defaults
  params.compute_efficiency = solve_monotonic(
      [&](double e) {
        CostParams q = params;
        q.compute_efficiency = e;
        return simulate(spec(points[0].model, points[0].gpus), q).tflops_per_gpu;
      },
      points[0].tflops, 0.01, 1.0);
  fam.fitted_parameters = fmt::format(
      "compute efficiency {:.3f} (of 312 TFLOPS, fitted on RoBERTa-50B at 64 GPUs); network efficiency {:.2f} intra, "
      "{:.2f} inter (defaults, not fitted)",
      params.compute_efficiency, params.intra_efficiency, params.inter_efficiency);
  fam.assumptions =
      "RoBERTa shapes assumed (10B: L128 h2560; 50B: L62 h8192; V 50265), flat ring all-gathers (DeepSpeed), bf16 "
      "parameters and gradients, full activation recompute, TFLOPS counted as 6N + 6LCT per token";
  for (size_t i = 0; i < points.size(); ++i) {
    const auto pr = simulate(spec(points[i].model, points[i].gpus), params);
    fam.rows.push_back({fam.name, fmt::format("{} on {} GPUs", points[i].model, points[i].gpus), "TFLOPS/GPU",
                        points[i].tflops, pr.tflops_per_gpu, i == 0});
  }
  return fam;
}

AnchorFamily fsdp2_family() {
  AnchorFamily fam;
  fam.name = "FSDP2 HSDP 2x8 A100, Ethernet";
  const auto spec = [](int accum, bool every) {
    RunSpec s;
    s.model = find_model("6.7b");
    s.cluster = find_cluster("a100-80gb-ethernet");
    s.world = 16;
    s.strategy = topo::Strategy::kMics;
    s.partition_size = 8;
    s.micro_batch = 16;
    s.seq_len = 2048;
    s.grad_accum = accum;
    s.all_reduce_every_micro_step = every;
    return s;
  };
  // Two parameters, two independent points. The 54.3 s run minus the 22.2 s run is three
  // micro-steps without the cross-node all-reduce: it fixes the compute efficiency (the
  // intra-node gathers and reduce-scatters do not depend on the network). The 22.2 s run then
  // fixes the network. Two rounds settle the small coupling between them.
  CostParams params;
  for (int round = 0; round < 2; ++round) {
    params.compute_efficiency = solve_monotonic(
        [&](double e) {
          CostParams t = params;
          t.compute_efficiency = e;
          return simulate(spec(4, false), t).step_s - simulate(spec(1, true), t).step_s;
        },
        54.3 - 22.2, 1e-3, 1.0);
    params.inter_efficiency = solve_monotonic(
        [&](double x) {
          CostParams t = params;
          t.inter_efficiency = x;
          return simulate(spec(1, true), t).step_s;
        },
        22.2, 1e-4, 1.0);
  }
  fam.fitted_parameters = fmt::format(
      "compute efficiency {:.3f} (of 312 TFLOPS) and inter-node efficiency {:.3f} (of 100 Gbps: {:.2f} GB/s), fitted on "
      "the 22.2 s and 54.3 s points together",
      params.compute_efficiency, params.inter_efficiency, 12.5 * params.inter_efficiency);
  fam.assumptions =
      "model and Ethernet speed not given by the source: GPT-3 6.7B, micro-batch 16 x 2048 assumed, 100 Gbps nominal; "
      "bf16 gathers and gradient reductions; reduce-scatter every micro-step; the all-reduce on the reduce stream "
      "right after each unit's reduce-scatter";
  const struct {
    const char* point;
    int accum;
    bool every;
    double seconds;
    bool fitted;
  } points[] = {{"1 micro-step", 1, true, 22.2, true},
                {"4 micro-steps, all-reduce each micro-step", 4, true, 88.8, false},
                {"4 micro-steps, all-reduce at the boundary (2-hop)", 4, false, 54.3, true}};
  for (const auto& pt : points)
    fam.rows.push_back(
        {fam.name, pt.point, "step s", pt.seconds, simulate(spec(pt.accum, pt.every), params).step_s, pt.fitted});
  return fam;
}

}  // namespace

std::vector<AnchorFamily> validate_anchors() { return {zero3_family(), fsdp2_family()}; }

std::string format_anchor_table(const std::vector<AnchorFamily>& families) {
  std::string out = "| family | point | metric | published | predicted | error | role |\n|---|---|---|---|---|---|---|\n";
  for (const auto& f : families)
    for (const auto& r : f.rows)
      out += fmt::format("| {} | {} | {} | {:.2f} | {:.2f} | {:+.1f}% | {} |\n", f.name, r.point, r.metric, r.published,
                         r.predicted, 100 * r.error(), r.fitted ? "fitted" : "predicted");
  out += "\n";
  for (const auto& f : families)
    out += fmt::format("- {}: {}. Assumptions: {}.\n", f.name, f.fitted_parameters, f.assumptions);
  return out;
}

}  // namespace mics::plan
