#pragma once
// Straggler detection: which rank held the others up in a step, and by how much.
//
// Per step and rank, from the collectives this rank ran during the step (obs/observer.hpp):
//   idle  = step wall time - time inside collectives: how long the rank's communication
//           thread sat waiting for its own compute (the time during which the other ranks,
//           if it was late, sat inside collectives waiting for it);
//   arrival[k] = when the rank entered the step's k-th collective, on the job's common clock.
// Every rank contributes a fixed-size vector to one max all-reduce (so sizes always agree);
// from the result every rank computes the same answer:
//   straggler_rank  = argmax over ranks of idle (lowest rank on ties)
//   straggler_delay = idle[straggler] - median over ranks of idle: the extra time the slowest
//                     rank spent computing, which the others spent waiting for it
//   arrival_spread  = max over k of (latest - earliest arrival at the k-th collective), for the
//                     first kArrivalSlots collectives when every rank ran the same number,
//                     and at the step's end (when each rank closed its window)
// The common clock is rank 0's steady clock, estimated once at start-up (comm/clock_sync.hpp):
// its error is at most half the best round trip of the ping-pong (tens of microseconds on shm
// and EFA), well below the delays this is meant to find (milliseconds).
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mics::obs {

constexpr int kArrivalSlots = 48;

struct StragglerWindow {
  double idle_ms = 0;
  std::vector<double> arrivals_ms;  // relative to the common anchor, the first kArrivalSlots
  double close_ms = 0;              // when the window closed (relative to the anchor)
  int collectives = 0;
};

struct StragglerResult {
  int rank = -1;            // -1: a single rank, nothing to compare
  double delay_ms = 0;
  double spread_ms = 0;
  double close_max_ms = 0;  // the latest close (every rank gets the same value)
  bool slots_agree = false;
  std::vector<double> idle_ms;  // per rank
};

size_t straggler_payload_size(int world);
std::vector<float> straggler_payload(int rank, int world, const StragglerWindow& window);
// `reduced`: the element-wise max over ranks of their payloads.
StragglerResult analyze_stragglers(const std::vector<float>& reduced, int world);

}  // namespace mics::obs
