#pragma once
// The published figures the cost model is checked against (shared/anchors/README.md), encoded
// as runs: efficiency parameters are fitted on one point of a family and the others predicted.
//
// ZeRO-3 on p4d.24xlarge (DeepSpeed, bf16, micro-batch 16, seq 512, activation checkpointing,
// TFLOPS per GPU without the recomputation): RoBERTa-10B 92.07 on 64 GPUs, RoBERTa-50B 116.06 on
// 64 and 108 on 256. Fitted: the compute efficiency, on RoBERTa-50B at 64 GPUs; the network at
// the catalog's default efficiency (0.8 of 400 Gbps).
//
// FSDP2 hybrid sharding (HSDP: shard 8 inside a node, replicate 2), 2 nodes x 8 A100-80GB over
// Ethernet (NVIDIA/cosmos-framework#161): 1 micro-step 22.2 s; 4 micro-steps all-reducing every
// micro-step 88.8 s; all-reducing only at the boundary (2-hop) 54.3 s. The source gives neither
// the model nor the Ethernet speed, so the family has two unknowns (compute per micro-step and
// the effective network bandwidth) and only two independent numbers (88.8 = 4 x 22.2 is the
// structure, not new information): both parameters are fitted on the 22.2 s and 54.3 s points
// and the 88.8 s point is predicted. Assumed model: GPT-3 6.7B, micro-batch 16 x 2048 tokens,
// no recompute (any model gives the same times once the two parameters are fitted; the fitted
// values change).
#include <functional>
#include <string>
#include <vector>

#include "plan/simulator.hpp"

namespace mics::plan {

struct AnchorRow {
  std::string family, point;
  std::string metric;  // "TFLOPS/GPU" or "step s"
  double published = 0, predicted = 0;
  bool fitted = false;  // a point the parameters were fitted on
  double error() const { return (predicted - published) / published; }
};

struct AnchorFamily {
  std::string name;
  std::string fitted_parameters;  // the values and the point(s) they were fitted on
  std::string assumptions;
  std::vector<AnchorRow> rows;
};

std::vector<AnchorFamily> validate_anchors();
std::string format_anchor_table(const std::vector<AnchorFamily>& families);  // markdown

// Bisection for x in [lo, hi] with f(x) = target, f monotonic (either direction).
double solve_monotonic(const std::function<double(double)>& f, double target, double lo, double hi);

}  // namespace mics::plan
