#pragma once
// The reduce-scatter phase shared by the ring reduce-scatter and the ring all-reduce.
#include <cstddef>

#include "comm/communicator.hpp"
#include "comm/op.hpp"

namespace mics::comm {

struct RingReduceBuffers {
  const std::byte* input = nullptr;  // this member's full input array
  std::byte* accumulator = nullptr;  // full-size array where partial sums are formed
  std::byte* final_block = nullptr;  // where the fully reduced own block goes
  // Null: receive partials straight into the accumulator (it must not alias input).
  // Else: receive into these slots (ring_staging_bytes() long) and combine into the
  // accumulator, which may then alias the input (all-reduce in place).
  std::byte* staging = nullptr;
};

void ring_reduce_phase(Communicator& comm, Op& op, const RingReduceBuffers& buffers, size_t count,
                       DType dtype, ReduceOp reduce);
size_t ring_staging_bytes();
int64_t knobs_chunk_bytes();

}  // namespace mics::comm
