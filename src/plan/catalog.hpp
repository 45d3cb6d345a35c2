#pragma once
// The cluster catalog of `mics plan`: per instance type, the accelerators of a node and the two
// rails every rank uses (intra-node: NVLink/NVSwitch/NeuronLink or shm; inter-node: EFA, or
// the tcp/verbs rail here). Numbers are the vendors' nominal figures (sources in catalog.cpp);
// the cost model multiplies the bandwidths by an efficiency (CostParams) that is stated, or
// fitted by `mics plan --calibrate`.
#include <string>
#include <vector>

namespace mics::plan {

// One rail in the alpha-beta model: a message of b bytes over one hop costs latency + b/bandwidth.
struct Rail {
  double bandwidth = 0;  // bytes/s, one direction. intra: per accelerator; inter: per node (all NICs)
  double latency = 0;    // seconds per hop (alpha)
  // A rail measured on this host's CPU (host:BENCH.json): how many ranks shared each core while
  // the bench ran (ranks / cores, at least 1). The simulator scales the rail to a run's sharing.
  double measured_core_sharing = 1.0;
};

struct Cluster;
// The CPU engine's rails for a run of `ranks_on_host` ranks on cl.host_cores cores: a rail's
// time is the cores' time there, so each measured rail is scaled by the run's sharing of the
// cores over the sharing it was measured at (Rail::measured_core_sharing). Other clusters: cl.
Cluster rails_at_core_sharing(const Cluster& cl, int ranks_on_host);

struct Cluster {
  std::string name;
  std::string description;
  int gpus_per_node = 8;
  double peak_flops = 0;       // per accelerator, dense bf16 (fp16 on V100), FLOP/s
  double memory_bytes = 0;     // per accelerator
  double memory_bandwidth = 0; // per accelerator (HBM), bytes/s: the optimizer step is bound by it
  Rail intra, inter;
  // The CPU engine of this repository (fp32 parameters, gradients and gathers; the memory of
  // `mics train`) instead of bf16 mixed precision on accelerators.
  bool cpu_engine = false;
  // CPU engine: the cores of one host (reported by --calibrate beside the fitted hop wait,
  // which exists because ranks outnumber them). 0: accelerators.
  int host_cores = 0;
};

const std::vector<Cluster>& catalog();
std::vector<std::string> cluster_names();

// An instance name from the catalog, "host" (this machine with default rails), or
// "host:FILE.json[,FILE2.json...]": this machine with rails measured by `mics bench --json`
// (a run on one node gives the intra-node rail, a run over several nodes the inter-node one;
// several runs of a rail: each size's fastest, see rail_from_bench_files).
// Throws mics::Error (layer plan) naming the valid clusters.
Cluster find_cluster(const std::string& name);

// The rail that `mics bench --json` files measured: the largest message's bus bandwidth, and the
// smallest message's time per ring step as latency. Several files must be runs of one bench
// command (same ranks and nodes, else an error): each message size's fastest run is kept, as a
// benchmark keeps its fastest block. nodes_out: the runs' node count.
Rail rail_from_bench_files(const std::vector<std::string>& paths, int* nodes_out, int* ranks_per_node_out);

}  // namespace mics::plan
