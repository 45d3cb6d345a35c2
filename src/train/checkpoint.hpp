#pragma once
// Checkpoints of `mics train` (io/checkpoint.hpp for the files and the commit protocol).
//
// Save (every --ckpt-every steps, into --out/step-XXXXXXXX/): at the step boundary every rank
// copies the ranges it writes (shard/checkpoint_state.hpp checkpoint_ranges: each unique element once,
// writers spread over the replicas) into a host buffer allocated up front; that copy is the
// only pause. A background thread then writes and fsyncs the rank's file while training goes
// on. At each later step boundary the ranks agree (one small control all-reduce) whether every
// writer finished; when all did, rank 0 writes the manifest (the commit) and then deletes the
// checkpoints beyond --keep, never before the newer one committed. At most one save is in
// flight: when the next is due first, the step waits for it (and says how long it waited).
// --ckpt-sync writes in the foreground instead.
//
// A failed write on any rank (disk full, permission denied, a vanished directory) is logged by
// that rank, and rank 0 reports the save as failed naming the ranks and their system errors
// ("failed on rank(s) 1 (No space left on device)"); the partial directory is removed, the
// previous checkpoint is untouched and training continues without this one (the log says so).
// Only the final save (end of the run or a stop signal) stops the run with an error when it
// fails.
//
// A committed checkpoint is only ever deleted by --keep rotation. A save whose step directory
// already holds a committed checkpoint of that step (after resuming from an older one of the
// same run directory) keeps it and writes nothing (on a deterministic resume the state is the
// same bit for bit); a step directory without a manifest is leftovers of an unfinished save
// and is replaced.
//
// Resume (--resume auto|PATH): the newest checkpoint whose manifest, files and digests check
// out on every rank, falling back past broken ones with a message naming what is wrong. The
// state loads into any world size and strategy (each rank reads the global ranges it holds),
// the optimizer counters are restored and training continues at step t (sampler position t *
// global batch; a different global batch is an error).
//
// The logical layout: whatever trains (the plain trainer, or a mesh of tensor and pipeline
// slices, train/mesh_trainer.cpp), tensors are stored as the single-process GPT's units
// ("embed", "block.l") x ("param", "exp_avg", "exp_avg_sq"), flat in gpt.hpp's layout. A
// StateLayout says where each engine unit's elements sit in them (model/gpt_tp.hpp's
// UnitPiece: for a tensor slice, contiguous row blocks and strided column slices) and which
// of several identical copies writes which part. Each rank writes its own elements in place
// as chunks of the logical tensors (a column slice as one strided chunk), with no
// communication; a loader reads, for every range it holds, the runs of the logical tensors it
// maps to (CheckpointReader::read_runs, each chunk read once). So any (r, p, s, t), ddp,
// zero3 or mics, reads any other's checkpoint.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/gpt.hpp"
#include "model/gpt_tp.hpp"
#include "shard/checkpoint_state.hpp"
#include "train/config.hpp"

namespace mics::train {

// How one rank's engine maps onto the checkpoint's logical tensors (see above).
struct StateLayout {
  int rank = 0, world = 1;  // over the whole job: one rank-RRRRR.bin per rank
  int data_ranks = 1;       // ranks that read different data (the world, or r*p of a mesh)
  nlohmann::json mesh;      // {"r", "p", "s", "t", "order"} of a mesh; null for the plain trainer
  // Where engine unit `unit`'s elements are in the logical units (local offsets in the unit).
  std::function<std::vector<model::UnitPiece>(int unit)> pieces;
  // {copies, which}: the unit's state is held identically by `copies` ranks that have the same
  // checkpoint ranges (the tied wte on the first and last stage, units replicated over the
  // tensor ranks); copy `which` writes part `which` of each range. {1, 0} when unique.
  std::function<std::pair<int, int>(int unit)> copies;
  // A control all-reduce over every rank of the job (collective, blocking).
  std::function<void(float*, size_t, ReduceOp)> all_reduce;
};

// The plain trainer's layout: engine unit u is the logical unit u, held once.
StateLayout plain_layout(shard::CheckpointState& state, const model::Gpt& gpt, int rank, int world);

class Checkpointer {
 public:
  Checkpointer(shard::CheckpointState& state, const TrainConfig& config, const model::Gpt& gpt, StateLayout layout,
               int seq_len, int start_step, std::string loaded_from);
  ~Checkpointer();
  bool enabled() const;
  // After `step` optimizer steps: commits a finished save, starts a due one. Collective.
  void after_step(int step);
  // End of training (or a stop): saves `step` if not saved yet, waits and commits. Collective;
  // throws if that save fails.
  void finish(int step);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Loads a checkpoint per config.resume ("none", "auto": the newest good one under --out, or a
// path: a step directory or a run directory) or config.init_from (a Hugging Face GPT-2
// directory). Returns the step to continue from (0 for a fresh start or --init-from) and, in
// `source`, what was loaded. Collective.
int load_initial_state(shard::CheckpointState& state, const TrainConfig& config, const model::Gpt& gpt,
                       const StateLayout& layout, int seq_len, std::string* source);

}  // namespace mics::train
