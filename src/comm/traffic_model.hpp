#pragma once
// What each collective algorithm sends, per rail, as a closed form of the communicator's
// layout, the count and the algorithm (the same one kAuto would pick). Written from the
// algorithm descriptions at the top of each algorithm file; tests/comm_worker.cpp checks it
// against the fabric counters for every op, algorithm and layout, and the sharded engine adds
// these up to predict a training step's traffic.
#include <string>

#include "comm/communicator.hpp"

namespace mics::comm {

// Bytes (and messages) this member would send for one call of `op` ("all_gather",
// "reduce_scatter", "all_reduce") of `count` elements of `dtype` with `algo` (kAuto resolved
// the way the communicator resolves it). Requires the hierarchical sub-communicators to exist
// if the hierarchical all-gather is chosen (they are created by the first such call).
Traffic predict_traffic(const Communicator& comm, const std::string& op, size_t count, DType dtype,
                        Algo algo = Algo::kAuto);

}  // namespace mics::comm
