#pragma once
// The job's common clock for traces and straggler detection: each rank estimates the offset of
// its steady clock from rank 0's with an NTP-style ping-pong (rank 0 sends its time t0, the
// peer answers with its time t1, rank 0 reads t3 on the answer; offset = (t0 + t3)/2 - t1 from
// the round with the smallest round trip). The error is at most half that round trip: tens of
// microseconds over shm or EFA, which the result reports (rtt_ns). Ranks on one host share the
// clock (CLOCK_MONOTONIC), so their offsets come out within that error of zero.
//
// Collective over `comm` (every member calls it); rank 0 talks to each peer in turn, so it
// costs (size-1) * rounds round trips on rank 0. Its messages count in comm's traffic.
#include "comm/communicator.hpp"
#include "obs/observer.hpp"

namespace mics::comm {

obs::ClockSync sync_clocks(Communicator& comm, int rounds = 8);

}  // namespace mics::comm
