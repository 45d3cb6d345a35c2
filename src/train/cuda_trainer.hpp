#pragma once
// `mics train --device cuda`: the GPT on GPUs, one rank or several (cuda_trainer.cpp).
#include "train/config.hpp"

namespace mics::train {

// Returns the exit status; throws mics::Error (no GPU, bad flags).
int run_cuda_training(const TrainConfig& config);

}  // namespace mics::train
