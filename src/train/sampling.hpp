#pragma once
// Picking the next token of a text sample from a row of logits: the trainers' end-of-run
// samples (greedy and temperature 0.8), shared so that the plain and mesh trainers draw the
// same tokens from the same logits and random stream.
#include <cstdint>
#include <string>
#include <vector>

namespace mics::io {
class TokenDataset;
}

namespace mics::train {

// argmax of logits[0, vocab): the greedy choice.
int32_t greedy_token(const float* logits, int vocab);

// A draw from softmax(logits / temperature) (temperature > 0), by inverting its CDF at
// uniform01 * (the unnormalised total): uniform01 in [0, 1), from the caller's random stream.
int32_t sample_token(const float* logits, int vocab, double temperature, double uniform01);

// The prompt of the end-of-run samples: the first min(8, seq_len) tokens of the dataset's first
// sequence (the validation set when there is one, so that runs of any layout sample alike).
std::vector<int32_t> sample_prompt(const io::TokenDataset& source, int seq_len);

// The samples as printed at the end of a run: a header naming the prompt, then one line per
// sequence ([greedy], then [t=0.8]), as text for byte-level vocabularies (<= 256), else token ids.
std::string format_samples(const std::vector<int32_t>& prompt, const std::vector<std::vector<int32_t>>& seqs, int vocab,
                           bool from_validation);

}  // namespace mics::train
