#pragma once
// The sharded engine of the GPU path (`mics train --device cuda` with several ranks).
//
// What is sharded (ZeRO-3 / MiCS, the call pattern of the CPU engine, shard/engine.hpp): the
// model is a list of units (GPT: unit 0 = embeddings + final LayerNorm, then one per block);
// each unit's fp32 parameters are padded to a multiple of the world size N (unit_padded(u))
// and cut into p equal shards, p the partition size (ddp 1, zero3 N, mics p; topo/groups.hpp).
// A rank keeps on the device, for its shard of every unit (the shards concatenated in unit
// order): fp32 master weights, the fp32 gradient accumulator and both AdamW moments, 16 bytes
// per shard element: model states per rank = (params + grads + 2 moments) / p (plus padding).
// No full-model parameter or gradient array exists on any rank: the model (CudaGpt with
// CudaOptions::shard_pad) holds per-unit working buffers and calls, per micro-step,
//   gather(u, dst)  before unit u's forward and again before its backward (two per unit per
//                   micro-step, like the CPU engine: unit 0 before the embedding and before
//                   the head; the head's copy serves the head's backward): an fp32 all-gather
//                   of the unit's shards inside the partition group into dst, on the engine's
//                   stream after the model's work so far (the slot it overwrites is free);
//   wait(u)         the model's stream waits for that gather (an event per unit): a gather
//                   issued one unit early overlaps the current unit's compute (prefetch);
//   reduce(u, g)    right after unit u's backward: reduce-scatter (fp32) of its padded
//                   gradient inside the partition group, added into the shard accumulator, on
//                   the engine's stream, which runs behind the model's: the model goes on with
//                   the next unit's backward (into its other gradient buffer);
//   reuse(g)        before the model writes gradient buffer g again: its stream waits for the
//                   last reduce-scatter that read g.
//                   On the last micro-step of a step (the grad_accum-th reduce of unit u), the
//                   2-hop all-reduce of unit u's accumulated shard across the replication group
//                   follows right there, overlapping the backward of the units before it.
// Checkpoints go through the CheckpointState interface (train/checkpoint.hpp writes the same
// logical files as the CPU engine's, so either engine resumes the other's).
// step(): the global norm (a one-float all-reduce over the partition group), clipping and
// AdamW on the shard. The next micro-step gathers the new parameters.
// Traffic per optimizer step and rank (ring formulas, M = sum of padded unit bytes, fp32):
//   S * 2 * (p-1)/p * M  +  S * (p-1)/p * M  +  2 (r-1)/r * M/p  +  norm all-reduce (one float)
// (the replication all-reduce runs per unit; the unit shards are multiples of r, so their
// ring bytes add up to the formula's exactly).
// plus, outside training, one gather per block and two of unit 0 per forward-only pass (eval).
// expected_traffic() predicts it per rail (fabric: comm::predict_traffic per call, exactly;
// nccl: the same ring formula GpuComm counts).
//
// No CUDA headers here; the AdamW and norm kernels come from the caller (shard/ sits below
// model/, where the CUDA kernels live).
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "comm/gpu_comm.hpp"
#include "comm/runtime.hpp"
#include "shard/engine.hpp"
#include "topo/groups.hpp"

namespace mics::shard {

struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay, grad_scale, clip_norm;
  int64_t t;  // 1-based, for the bias corrections
};

// Device kernels the engine needs (the model layer's): the sum of squares of x into *out
// (one float on the device), and AdamW over a flat fp32 shard with the clipping rule of
// model/cuda/kernels.hpp (skips the update when *norm_sq is not finite).
struct DeviceOptimizer {
  std::function<void(const float* x, size_t n, float* out, comm::GpuStream s)> sum_squares;
  std::function<void(float* param, const float* grad, float* m, float* v, size_t n, const float* norm_sq,
                     const AdamWStep& a, comm::GpuStream s)>
      adamw;
};

struct CudaEngineOptions {
  topo::Strategy strategy = topo::Strategy::kMics;
  int partition_size = 0;  // mics: 0 = the ranks per node
  int grad_accum = 1;
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f, clip_norm = 0.0f;
  int max_skipped_steps = 3;
  comm::GpuBackend backend = comm::GpuBackend::kFabric;
  // kBF16: each gather casts this rank's fp32 master shard to bf16 (round to nearest even) and
  // all-gathers that: half the bytes, as FSDP's param_dtype = bf16. The model's GEMMs see the
  // same bf16 weights either way; what it reads in fp32 (LayerNorm weights, biases) arrives
  // bf16-rounded. Traffic: the gathers' term of the formula halves.
  DType gather_dtype = DType::kF32;
};

struct CudaStepReport {
  bool skipped = false;
  double grad_norm = 0;     // of the averaged gradient, before clipping
  double comm_wait_s = 0;   // host time spent in the fabric staging and the step's wait
};

// What the model calls per unit (see above); streams are cudaStream_t.
struct UnitSource {
  // dst: the unit's fp32 buffer, dst_bf16 its bf16 one (both unit_padded(u) elements); the
  // engine fills dst_bf16 when bf16_gathers, else dst.
  std::function<void(int unit, float* dst, void* dst_bf16, comm::GpuStream s)> gather;
  std::function<void(int unit, comm::GpuStream s)> wait;
  std::function<void(int unit, const float* grads, comm::GpuStream s)> reduce;
  std::function<void(const float* grads, comm::GpuStream s)> reuse;
  bool bf16_gathers = false;
};

class CudaEngine final : public CheckpointState {
 public:
  // Collective over runtime's world. The caller made its GPU current (comm::select_gpu_device).
  // unit_numel: every unit's parameter count, same on every rank.
  CudaEngine(comm::Runtime& runtime, const CudaEngineOptions& options, std::vector<size_t> unit_numel,
             DeviceOptimizer ops);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  int world_size() const;                // units are padded to a multiple of it
  size_t unit_padded(int unit) const;     // floats of a gathered unit / its gradient buffer
  size_t shard_size() const;              // this rank's shard floats over all units
  // Takes this rank's shards from init(unit, host) (the unit's full parameters, unit_numel
  // floats, identical on every rank; the rest of the padded host buffer is zero).
  void finalize(const std::function<void(int unit, float* host)>& init);
  UnitSource unit_source();  // valid while the engine lives
  // After grad_accum micro-steps (every unit reduced grad_accum times, its 2-hop all-reduce
  // enqueued with the last): norm, clip, AdamW on the shard (`stream`, the model's, waits for it).
  CudaStepReport step(float lr, comm::GpuStream stream);

  int64_t optimizer_steps() const;
  int partition_size() const override;
  int replicas() const;
  comm::GpuBackend backend() const;
  // A few floats over every rank on the host (the mean loss): not in traffic().
  void control_all_reduce(float* values, size_t count, ReduceOp op) override;
  // Checkpoints (shard/checkpoint_state.hpp): the ranges are this rank's shard of every unit
  // (replica j of r writing piece j) in device memory; copy_state copies from the device (after
  // the engine's stream); load_state reads the whole shard on the host, uploads it and zeroes the
  // gradient accumulator.
  std::vector<StateRange> checkpoint_ranges() const override;
  void copy_state(const StateRange& r, int which, size_t offset, size_t count, float* dst) const override;
  void load_state(const StateReader& read) override;
  OptimizerCounters optimizer_counters() const override;
  void set_optimizer_counters(const OptimizerCounters& counters) override;
  comm::Traffic traffic() const;
  // optimizer_steps steps plus forward_passes forward-only passes (eval).
  comm::Traffic expected_traffic(int optimizer_steps, int forward_passes = 0) const;
  uint64_t model_state_bytes() const;  // 16 bytes per shard element

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mics::shard
