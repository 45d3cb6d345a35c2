#pragma once
// Collectives on device (CUDA) buffers, for the GPU path of the sharded engine.
//
// Same contract as Communicator (communicator.hpp): every member calls the same collectives in
// the same order; counts are the TOTAL element count; all_gather's input is the caller's block,
// reduce_scatter's output the caller's block (comm/layout.hpp). Operations are enqueued on the
// caller's CUDA stream (`GpuStream`, a cudaStream_t passed as void*).
//
// Two backends:
//  - nccl: one ncclComm per communicator, its unique id exchanged through the rendezvous store.
//    Calls return at once (work on the stream). Every rank needs a GPU of its own, and counts
//    must split evenly (count % size() == 0). The comm is created non-blocking; set-up, enqueue
//    and synchronize() poll ncclCommGetAsyncError under the MICS_TIMEOUT_S deadline and, on an
//    error or the deadline, call ncclCommAbort and throw mics::Error naming op, group and peer.
//    After such an error the communicator must not be used again.
//  - fabric: device buffers staged through pinned host memory (cudaMallocHost) and reduced by
//    the host Communicator over the libfabric rails. Calls return when the operation is done
//    (they synchronize the stream: the host path needs the bytes). Any count. This is what
//    several ranks on one GPU, and MICS_GPU_COMM=fabric, use.
//
// traffic(): fabric, the host communicator's counters (exact, per rail); nccl does not report
// bytes, so its figure is the ring formula per call ((n-1)/n of the array for all-gather and
// reduce-scatter, twice that for all-reduce), on the intra-node rail when the group is inside
// one node, else the inter-node rail.
#include <cstddef>
#include <memory>
#include <string>

#include "base/dtype.hpp"
#include "comm/communicator.hpp"
#include "comm/runtime.hpp"

namespace mics::comm {

using GpuStream = void*;  // cudaStream_t

enum class GpuBackend { kNccl, kFabric };
const char* to_string(GpuBackend backend);

class GpuComm {
 public:
  virtual ~GpuComm() = default;
  virtual void all_gather(const void* shard, void* output, size_t count, DType dtype, GpuStream stream) = 0;
  virtual void reduce_scatter(const void* input, void* shard, size_t count, DType dtype, ReduceOp op,
                              GpuStream stream) = 0;
  virtual void all_reduce(const void* input, void* output, size_t count, DType dtype, ReduceOp op,
                          GpuStream stream) = 0;
  // Waits for everything enqueued on `stream` (deadline MICS_TIMEOUT_S; nccl: aborts and throws
  // on an asynchronous NCCL error or the deadline). `what` names the wait in the error.
  virtual void synchronize(GpuStream stream, const char* what) = 0;
  virtual GpuBackend backend() const = 0;
  virtual Traffic traffic() const = 0;
  int rank() const { return host_.rank(); }
  int size() const { return host_.size(); }
  const std::string& name() const { return host_.name(); }
  Communicator& host() { return host_; }

 protected:
  explicit GpuComm(Communicator& host) : host_(host) {}
  Communicator& host_;
};

// The GPU this rank uses: its local index on the node modulo the visible GPUs (also made the
// calling thread's current device). Throws kUnavailable without a GPU or a CUDA build.
int select_gpu_device(const Runtime& runtime);

struct GpuBackendChoice {
  GpuBackend backend = GpuBackend::kFabric;
  std::string reason;  // one line for the start-up banner
};
// Collective over the world: each rank publishes its GPU's UUID in the store; nccl when every
// rank has a GPU of its own (and the build has NCCL), else fabric; MICS_GPU_COMM=nccl|fabric
// forces one (nccl with a shared GPU is an error: NCCL refuses two ranks on one device).
GpuBackendChoice choose_gpu_backend(Runtime& runtime, int device);

// A GPU communicator over the members of `host` (which it borrows: keep it alive). nccl:
// collective over host's members (the unique id goes through `store`).
std::unique_ptr<GpuComm> make_gpu_comm(GpuBackend backend, Communicator& host, bootstrap::StoreClient& store);

}  // namespace mics::comm
