#pragma once
// What a checkpoint reads from and writes into whatever holds the training state: the CPU
// engine (shard/engine.hpp), the GPU sharded engine (shard/cuda_engine.hpp), or the one-GPU
// model (train/cuda_trainer.cpp). train/checkpoint.hpp saves and loads through this interface
// only, so every trainer writes the same logical files and reads any other's.
//
// Ranges are global element ranges of a unit (unpadded); over all ranks the ranges tile every
// unit exactly once (a shard held by r replicas is cut in r pieces, replica j writing piece j).
// A checkpoint copies their elements out with copy_state (a device-resident state copies from
// the device straight into the caller's buffer: no host mirror); valid until the next optimizer
// step or load.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "base/dtype.hpp"

namespace mics::shard {

// A global element range [offset, offset + count) of a unit and where this rank holds its fp32
// master weights and AdamW moments: host memory for the CPU engine, device memory for the GPU
// states (read them through CheckpointState::copy_state, which knows which).
struct StateRange {
  int unit = 0;
  size_t offset = 0, count = 0;
  const float* param = nullptr;
  const float* exp_avg = nullptr;
  const float* exp_avg_sq = nullptr;
};

// Piece k of n of the element range [lo, hi): how the engines cut a range held by n identical
// copies so that copy k writes piece k.
inline std::pair<size_t, size_t> checkpoint_piece(size_t lo, size_t hi, size_t k, size_t n) {
  const size_t len = hi - lo;
  return {lo + len * k / n, lo + len * (k + 1) / n};
}

// The optimizer's counters (AdamW's bias correction uses steps).
struct OptimizerCounters {
  int64_t steps = 0;          // applied optimizer steps
  int consecutive_skips = 0;  // non-finite steps in a row
};

class CheckpointState {
 public:
  virtual ~CheckpointState() = default;
  // The ranges this rank writes (see above).
  virtual std::vector<StateRange> checkpoint_ranges() const = 0;
  // Elements [offset, offset + count) (global, inside range r) of kind `which` (0 params,
  // 1 exp_avg, 2 exp_avg_sq) into dst (host memory). This default reads host pointers.
  virtual void copy_state(const StateRange& r, int which, size_t offset, size_t count, float* dst) const;
  // Replaces this rank's states with what read(unit, which, offset, count, out) gives for every
  // global range it holds (which: 0 params, 1 exp_avg, 2 exp_avg_sq); padding stays zero.
  // Local (no communication); drops gathered copies and accumulated gradients.
  using StateReader = std::function<void(int unit, int which, size_t offset, size_t count, float* out)>;
  virtual void load_state(const StateReader& read) = 0;
  virtual OptimizerCounters optimizer_counters() const = 0;
  virtual void set_optimizer_counters(const OptimizerCounters& counters) = 0;
  virtual int partition_size() const = 0;
  // A few floats over every rank of the state's job (collective, blocking; not in any traffic
  // count): what the checkpoint's ranks agree on.
  virtual void control_all_reduce(float* values, size_t count, ReduceOp op) = 0;
};

inline void CheckpointState::copy_state(const StateRange& r, int which, size_t offset, size_t count,
                                        float* dst) const {
  const float* src = which == 0 ? r.param : which == 1 ? r.exp_avg : r.exp_avg_sq;
  std::copy(src + (offset - r.offset), src + (offset - r.offset) + count, dst);
}

}  // namespace mics::shard
