#pragma once
// Picking the next token of a text sample from a row of logits: the trainers' end-of-run
// samples (greedy and temperature 0.8), shared so that the plain and mesh trainers draw the
// same tokens from the same logits and random stream.
#include <cstdint>

namespace mics::train {

// argmax of logits[0, vocab): the greedy choice.
int32_t greedy_token(const float* logits, int vocab);

// A draw from softmax(logits / temperature) (temperature > 0), by inverting its CDF at
// uniform01 * (the unnormalised total): uniform01 in [0, 1), from the caller's random stream.
int32_t sample_token(const float* logits, int vocab, double temperature, double uniform01);

}  // namespace mics::train
