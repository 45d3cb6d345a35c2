#pragma once
// The collective algorithms, one per file. Each documents the bytes every member sends, the
// formula the traffic tests check exactly. Arguments are already validated by Communicator.
#include <cstddef>
#include <vector>

#include "comm/communicator.hpp"

namespace mics::comm {

// A piece of the output buffer, in bytes.
struct Segment {
  size_t offset;
  size_t bytes;
};

// Pipelined ring all-gather of arbitrary contributions: member m's contribution is the list
// of output segments contributions[m]. `own_input` is the caller's contribution as one
// contiguous buffer (its segments concatenated), or null when it already sits in `output`.
void ring_all_gather_segments(Communicator& comm, const char* op_name, std::byte* output,
                              const std::byte* own_input,
                              const std::vector<std::vector<Segment>>& contributions);

void ring_all_gather(Communicator& comm, const void* shard, void* output, size_t count,
                     DType dtype);
void bruck_all_gather(Communicator& comm, const void* shard, void* output, size_t count,
                      DType dtype);
void hierarchical_all_gather(Communicator& comm, const void* shard, void* output, size_t count,
                             DType dtype);
void ring_reduce_scatter(Communicator& comm, const void* input, void* shard, size_t count,
                         DType dtype, ReduceOp op);
void ring_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype,
                     ReduceOp op);
void rd_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype,
                   ReduceOp op, const char* op_name = "all_reduce");
void hd_all_reduce(Communicator& comm, const void* input, void* output, size_t count, DType dtype, ReduceOp op);
void tree_broadcast(Communicator& comm, void* buffer, size_t bytes, int root);
void chain_broadcast(Communicator& comm, void* buffer, size_t bytes, int root);
void dissemination_barrier(Communicator& comm);

// Chunks of at most `chunk_bytes` (default MICS_CHUNK_BYTES; rounded down to whole elements)
// covering a range.
std::vector<Segment> chunk_range(size_t offset, size_t bytes, size_t element_size,
                                 size_t chunk_bytes = 0);

}  // namespace mics::comm
