#pragma once
// The learning rate of optimizer step t (0-based) of `steps`: linear warm-up from lr/warmup to
// lr over the first `warmup` steps, then a cosine decay to lr * min_ratio at the last step
// (GPT-2/llm.c practice). A pure function, so a resumed run gets the same values.
namespace mics::train {

struct LrSchedule {
  float peak = 3e-3f;
  int warmup = 0;
  int steps = 1;
  float min_ratio = 0.1f;
  float at(int step) const;
};

}  // namespace mics::train
