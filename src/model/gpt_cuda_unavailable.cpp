// The CUDA model's entry points in a build without CUDA (MICS_HAVE_CUDA unset): the device
// is reported missing, and constructing the model says why.
#ifndef MICS_HAVE_CUDA
#include "base/error.hpp"
#include "model/cuda/gpt_cuda.hpp"
#include "model/cuda/gpt_tp_cuda.hpp"

namespace mics::model::cuda {

std::string device_unavailable_reason() { return "no CUDA device: this build has no CUDA support (MICS_WITH_CUDA=OFF or no nvcc)"; }

struct CudaGpt::Impl {};

CudaGpt::CudaGpt(const GptConfig&, int, int, CudaOptions) {
  throw Error(ErrorKind::kUnavailable, "this mics was built without CUDA",
              {.layer = "model", .where = "CudaGpt", .hint = "rebuild with -DMICS_WITH_CUDA=ON on a machine with the CUDA toolkit"});
}
CudaGpt::~CudaGpt() = default;
size_t CudaGpt::num_params() const { return 0; }
size_t CudaGpt::unit_offset(int) const { return 0; }
void CudaGpt::upload_params(const float*) {}
void CudaGpt::download_params(float*) const {}
void CudaGpt::upload_moments(const float*, const float*) {}
void CudaGpt::download_state(int, size_t, size_t, float*) const {}
void CudaGpt::download_grads(float*) const {}
void CudaGpt::zero_grads() {}
void CudaGpt::forward_backward(const int32_t*, const int32_t*) {}
float CudaGpt::forward_loss(const int32_t*, const int32_t*) { return 0; }
float CudaGpt::accumulated_loss() { return 0; }
StepResult CudaGpt::step(const AdamWConfig&, int64_t, int) { return {}; }
std::vector<PhaseTime> CudaGpt::take_profile() { return {}; }
void* CudaGpt::stream() { return nullptr; }
void CudaGpt::set_unit_source(shard::UnitSource) {}
uint64_t CudaGpt::working_buffer_bytes() const { return 0; }
shard::DeviceOptimizer CudaGpt::device_optimizer() { return {}; }
uint64_t CudaGpt::allocated_bytes() const { return 0; }
std::string CudaGpt::attention_kind() const { return ""; }
std::string CudaGpt::graph_status() const { return ""; }
DeviceSummary device_summary() { return {}; }
uint64_t device_memory_in_use() { return 0; }

std::string stage_unsupported_reason(const GptConfig&, const TpOptions&) { return "this mics was built without CUDA"; }
std::unique_ptr<StagePass> make_stage_pass(const GptConfig&, TpSlice, int, int, int, TensorOps, TpOptions) {
  throw Error(ErrorKind::kUnavailable, "this mics was built without CUDA",
              {.layer = "model", .where = "CUDA mesh stage", .hint = "rebuild with -DMICS_WITH_CUDA=ON on a machine with the CUDA toolkit"});
}

}  // namespace mics::model::cuda
#endif
