#pragma once
// The sharded engine of the GPU path (`mics train --device cuda` with several ranks).
//
// What is sharded: the model's flat parameter array (every unit concatenated, numel floats)
// padded to a multiple of the world size (padded()) and cut into p equal shards, p the
// partition size (ddp 1, zero3 N, mics p; topo/groups.hpp). A rank keeps on the device, for
// its shard: fp32 master weights, the fp32 gradient accumulator and both AdamW moments
// (16 bytes per parameter / p).
//
// What is not (yet): the model itself keeps full-size fp32 and bf16 parameters and fp32
// gradients on every rank (the single-GPU model of model/cuda); there is no per-unit
// gather/release working set on the GPU path. So memory per rank is the optimizer states / p
// plus a full model copy (ZeRO-2-like), while the communication follows MiCS:
//   per micro-step: reduce_gradients() reduce-scatters the full gradient inside the partition
//                   group and adds the shard into the accumulator (fp32);
//   per step:       step() all-reduces the accumulator across the replication group (2-hop,
//                   once), the global norm (a one-float all-reduce over the partition group),
//                   clipping and AdamW on the shard on the device, then all-gathers the new
//                   master shards (fp32) into the model's parameter array.
// Traffic per optimizer step and rank (ring formulas, P = padded() floats, fp32):
//   S * (p-1)/p * 4P  +  2 (r-1)/r * 4P/p  +  norm all-reduce (one float)  +  (p-1)/p * 4P
// expected_traffic() predicts it per rail (for the fabric backend through comm::predict_traffic,
// exactly; for nccl through the same ring formula GpuComm counts).
//
// Streams: collectives run on the engine's own stream; reduce_gradients() makes it wait for
// the model's stream (an event), and the model's stream waits for the reduce-scatter before
// the gradients are written again (another event): no host synchronisation except what the
// fabric backend needs (it stages through host memory) and one per step to read the norm.
//
// No CUDA headers here; the AdamW and norm kernels come from the caller (shard/ sits below
// model/, where the CUDA kernels live).
#include <cstdint>
#include <functional>
#include <memory>

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
};

struct CudaStepReport {
  bool skipped = false;
  double grad_norm = 0;     // of the averaged gradient, before clipping
  double comm_wait_s = 0;   // host time spent in the fabric staging and the step's wait
};

class CudaEngine {
 public:
  // Collective over runtime's world. The caller made its GPU current (comm::select_gpu_device).
  CudaEngine(comm::Runtime& runtime, const CudaEngineOptions& options, size_t numel, DeviceOptimizer ops);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  size_t padded() const;  // floats the model's parameter and gradient arrays must hold (zeros past numel)
  size_t shard_size() const;
  // Takes this rank's shard from the full parameters (identical on every rank), on `stream`.
  void finalize(const float* device_params, comm::GpuStream stream);
  // After a micro-batch's backward on `stream`: reduce-scatter of the padded gradient.
  void reduce_gradients(const float* device_grads, comm::GpuStream stream);
  // After grad_accum reduce_gradients(): the 2-hop all-reduce, norm, clip, AdamW, and the
  // all-gather of the new parameters into device_params (`stream` waits for it).
  CudaStepReport step(float* device_params, float lr, comm::GpuStream stream);

  int64_t optimizer_steps() const;
  int partition_size() const;
  int replicas() const;
  comm::GpuBackend backend() const;
  // A few floats over every rank on the host (the mean loss): not in traffic().
  void control_all_reduce(float* values, size_t count, ReduceOp op);
  comm::Traffic traffic() const;
  comm::Traffic expected_traffic(int optimizer_steps) const;
  uint64_t model_state_bytes() const;  // 16 bytes per shard element

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mics::shard
