#pragma once
// The MiCS sharded data-parallel engine (CPU path).
//
// A model is a list of units (a transformer block, the embeddings, a layer of an MLP...).
// Each unit's parameters are one flat fp32 array, padded to a multiple of the world size and
// cut into p shards (p = the partition size). A rank owns, for its shard of every unit, the
// fp32 master weights, the AdamW moments and the gradient accumulator: model states per rank
// are (params + grads + 2 moments) / p, plus the working set of gathered units.
//
// Strategies are one engine: ddp is p = 1 (full replicas), zero3 is p = N, mics any valid p
// (topo/groups.hpp). Partition groups are contiguous rank blocks, replication groups strided.
//
// Use, per micro-step (S micro-steps per optimizer step, options.grad_accum):
//   forward:  for each unit i: params = gather(i); prefetch(i+1) (to overlap); compute;
//             release(i)
//   backward: for each unit in reverse: params = gather(i); compute grads; release(i);
//             reduce_gradients(i, grads)   (reduce-scatter inside the partition group, in the
//             background, accumulated into the shard)
//   then step(): at the accumulation boundary it all-reduces the gradient shards across the
//   replication group (the 2-hop sync), clips by the global norm and applies AdamW.
//
// Gradient scale: each rank passes the gradient of its own micro-batch loss (a mean over the
// micro-batch); the engine averages over all N ranks and S micro-steps, so the update equals
// single-process training on the global batch with the loss averaged over it.
//
// Communication runs on a thread of its own (the only thread that touches the communicators)
// so that gathers and reduce-scatters overlap compute; the time the caller spends waiting for
// it is the exposed communication time, reported per step.
//
// Traffic per optimizer step and rank (sharded units padded so every shard splits evenly),
// with M = padded parameter bytes of the sharded units, p, r = N/p, S micro-steps, and G the
// gathers per unit per micro-step (2; 1 with keep_gathered), for messages above
// MICS_SMALL_MSG_BYTES (ring algorithms):
//   all-gathers:     S * G * (p-1)/p * M      (hierarchical when the group spans nodes)
//   reduce-scatters: S * (p-1)/p * M          (in comm_dtype)
//   2-hop all-reduce:    2 * (r-1)/r * M/p    (once, at the boundary)
// plus the replicated units' gradient all-reduce 2*(N-1)/N * R and a one-float all-reduce for
// the global gradient norm. Smaller messages take the latency algorithms (Bruck all-gather,
// recursive-doubling all-reduce, which also serves small reduce-scatters), which send more.
// expected_traffic() follows the algorithm each call really takes (comm::predict_traffic),
// per rail, exactly. Replicated units (ddp's p = 1, or below replicate_below) are kept
// unpadded: their states cost 16 bytes per parameter.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "comm/runtime.hpp"
#include "shard/checkpoint_state.hpp"
#include "topo/groups.hpp"

namespace mics::shard {

struct EngineOptions {
  topo::Strategy strategy = topo::Strategy::kMics;
  static constexpr int kAutoPartition = -1;
  int partition_size = 0;       // mics only; 0: the ranks per node; kAutoPartition: the
                                // smallest that fits memory_budget_bytes (topo/partition_auto)
  uint64_t memory_budget_bytes = 0;  // per rank, for kAutoPartition
  uint64_t activation_bytes = 0;     // the caller's activation estimate per rank, likewise
  int grad_accum = 1;           // S: micro-steps per optimizer step
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;    // AdamW (decoupled)
  float clip_norm = 0.0f;       // global gradient-norm clipping; 0 disables
  DType comm_dtype = DType::kF32;  // dtype of the gradient reduce-scatter (fp32 accumulation)
  bool keep_gathered = false;   // keep gathered params from forward to backward (ZeRO-2-like)
  size_t replicate_below = 0;   // units with fewer elements stay replicated on every rank
  int max_skipped_steps = 3;    // consecutive non-finite steps tolerated before an error
  // Model parallelism (train/mesh_trainer.cpp): the gradient norm's sum of squares is also
  // summed over this communicator (the other slices' engines), once per step. Owned by the
  // caller, used only by the engine's communication thread; its traffic counts in traffic().
  comm::Communicator* norm_group = nullptr;
};

struct MemoryReport {
  uint64_t model_state_bytes = 0;  // this rank's shards: params + grads + 2 moments
  uint64_t gathered_peak_bytes = 0;  // largest working set of gathered units seen
  uint64_t full_model_params = 0;    // unpadded parameters of the whole model
};

struct StepReport {
  bool boundary = false;     // an optimizer step happened
  bool skipped = false;      // non-finite gradients: the update was skipped
  double grad_norm = 0;      // global norm before clipping (at a boundary)
  double exposed_comm_s = 0; // time the caller waited for communication since the last report
  double step_s = 0;         // wall time since the last report (the last step() call)
};

class Engine final : public CheckpointState {
 public:
  Engine(comm::Runtime& runtime, const EngineOptions& options);
  // An engine whose "world" is `world`, a sub-communicator of the runtime's (the data ranks of
  // one (pipeline stage, tensor rank) slice of a mesh, topo/mesh.hpp): partition and
  // replication groups, the gradient average (over world.size() * S micro-batches), the
  // replicated units' all-reduce and control_all_reduce all live inside it. Ranks per node
  // are world.members_per_node() (its size when not uniform).
  Engine(comm::Runtime& runtime, comm::Communicator& world, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Declare units (same order and sizes on every rank), then finalize with an initializer
  // that fills a unit's full parameters identically on every rank.
  int add_unit(const std::string& name, size_t numel);
  void finalize(const std::function<void(int unit, float* params)>& init);

  const float* gather(int unit);   // full parameters (waits for a prefetch in flight)
  void prefetch(int unit);         // start gathering in the background
  void release(int unit);          // drop the gathered copy (kept if keep_gathered, until step)
  void reduce_gradients(int unit, const float* grads);  // full-size gradient of the unit
  StepReport step();               // end of a micro-step

  // Model parallelism. set_norm_weight: the unit's squared gradient counts w times in the
  // global norm (1/t for a tensor replicated over t tensor ranks, so that summed over the
  // norm_group it counts once; default 1). tie_gradients: at the accumulation boundary the
  // unit's accumulated gradient shard is summed over `group` (its other copies: the tied token
  // embedding on the first and last pipeline stage, same padded size and partition layout),
  // one all-reduce of the shard per step, counted in traffic() and expected_traffic().
  // `group` is used only by the engine's communication thread.
  void set_norm_weight(int unit, float weight);
  void tie_gradients(int unit, comm::Communicator* group);
  // Runs `task` on the communication thread, after everything queued before it, and waits
  // (the wait counts as exposed communication). The caller's collectives on its own
  // communicators (tensor all-reduces, pipeline messages) go through here, so that one thread
  // drives the transport. The task's traffic is the caller's to count, not traffic()'s.
  void run_on_comm_thread(const std::function<void()>& task, const char* what = "wait for comm");

  // The learning rate of the next optimizer steps (a schedule sets it before each step()).
  void set_lr(float lr);
  float lr() const;
  int64_t optimizer_steps() const;  // applied (not skipped) so far

  // An all-reduce of a few floats over every rank, for control and reporting (the mean loss,
  // an agreed stop): collective, blocking, and left out of traffic() like full_parameters.
  void control_all_reduce(float* values, size_t count, ReduceOp op) override;

  // Checkpoints. checkpoint_ranges(): the ranges this rank writes; over all ranks they tile
  // every unit exactly once and spread evenly: a shard held by r replicas is cut in r pieces
  // (replica j writes piece j), a replicated unit in N pieces (rank k writes piece k). Valid
  // until the next step().
  std::vector<StateRange> checkpoint_ranges() const override;
  // Replaces this rank's states with what read(unit, which, offset, count, out) gives for
  // every global range it holds (which: 0 params, 1 exp_avg, 2 exp_avg_sq); padding stays zero.
  // Local (no communication); drops gathered copies and accumulated gradients.
  void load_state(const StateReader& read) override;
  OptimizerCounters optimizer_counters() const override;
  void set_optimizer_counters(const OptimizerCounters& counters) override;

  // The full parameters of a unit (collective: gathers the shards; its traffic is not counted
  // in traffic()), for checkpoints and tests.
  std::vector<float> full_parameters(int unit);
  int num_units() const;
  size_t unit_size(int unit) const;
  int partition_size() const override;  // known after finalize() when chosen automatically
  int replicas() const;
  const topo::Groups& groups() const;
  MemoryReport memory() const;
  // Bytes this rank sent per rail during engine operations (bytes_sent; msgs_sent counts real
  // messages), and the bytes the formula above says they must be for `optimizer_steps` steps
  // (only bytes_sent is predicted).
  comm::Traffic traffic() const;
  comm::Traffic expected_traffic(int optimizer_steps) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mics::shard
