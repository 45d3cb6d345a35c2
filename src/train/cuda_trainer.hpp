#pragma once
// `mics train --device cuda`: one rank training the GPT on one GPU (cuda_trainer.cpp).
#include "train/config.hpp"

namespace mics::train {

// Returns the exit status; throws mics::Error (no GPU, several ranks, bad flags).
int run_cuda_training(const TrainConfig& config);

}  // namespace mics::train
