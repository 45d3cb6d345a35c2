#pragma once
// The training loop of `mics train`, run by every rank (under mics launch, Slurm or mpirun):
// joins the job, builds the GPT and the sharded engine, reads the token shards through the
// distributed sampler, trains, evaluates, samples, and writes the metrics.
//
// One micro-step, per rank (model/gpt.hpp for the units):
//   gather(0) embed; release(0); for each block: prefetch(next), gather, forward, release;
//   gather(0) head + loss; backward through the head (unit 0 stays gathered until the
//   embedding's backward); for each block in reverse: prefetch(next), gather, backward,
//   release, reduce_gradients; embedding backward; release(0); reduce_gradients(0).
// then Engine::step(), which at the accumulation boundary runs the 2-hop sync and AdamW.
//
// Every rank checks everything it can before the job starts (flags, model, data, memory), so
// bad input is a one-line error and nothing is written.
#include "train/config.hpp"

namespace mics::train {

// Runs the job; returns the process exit status (0, also after a clean stop on SIGTERM).
// Throws mics::Error on failure.
int run_training(const TrainConfig& config);

// The checks a rank makes before joining (flags, model, data, memory for a fixed partition
// size), for `mics train -n N`, which runs them once before it starts the ranks.
void preflight(const TrainConfig& config, int world, int ranks_per_node, int ranks_on_this_host);

// The embedded default corpus (generated on first use, shared by later runs): its directory.
std::string ensure_embedded_corpus();

}  // namespace mics::train
