#pragma once
// A pipeline stage of the tensor-parallel GPT (model/gpt_tp.hpp) computed on a CUDA device, for
// `mics train --device cuda --tensor-parallel t --pipeline-parallel s` (train/mesh_trainer.cpp).
//
// The same slices, operators and collectives as the CPU TpPass, with the kernels of the one-GPU
// model (bf16 GEMMs through cuBLASLt with fp32 accumulation, fused causal attention, LayerNorm
// and GELU kernels) and the vocab-parallel cross-entropy in three kernels around the tensor
// group's two all-reduces. Every block's activations stay on the device for the backward.
//
// What crosses to the host, and why: the mesh's data engine keeps the shards and AdamW on the
// host (shard/engine.hpp), so a block's gathered parameters are uploaded when it runs and its
// gradients downloaded when its backward ends; the tensor all-reduces and the pipeline messages
// go through host memory over the libfabric rails (TensorOps, as when ranks share a GPU and
// NCCL cannot serve them). The embedding lookup and its gradient run on the host, where the
// gathered vocabulary slice already is (a gather of N rows: memory-bound, no FLOPs).
//
// Precision: the tensor group's partial outputs are summed in fp32; the gradients at the
// LayerNorm outputs (bf16, what the GEMMs produce) are all-reduced in fp32 and rounded to bf16
// once. Sequence parallelism's gathers and reduce-scatters (gpt_tp.hpp) run the same way: a
// LayerNorm output (bf16) crosses exactly, the partial sums and gradients are summed in fp32
// (a gradient rounded to bf16 once); the row reorders between rank-major and (b, position)
// order happen on the host, where the rows are anyway. Recompute reruns a block's forward,
// its collectives included, before its backward, into one shared set of activations.
//
// No CUDA headers here; without a CUDA build the functions throw (gpt_cuda_unavailable.cpp).
#include <memory>
#include <string>

#include "model/gpt_tp.hpp"

namespace mics::model::cuda {

// "" when a CUDA stage can run this model with these options; else what is missing and what to do.
std::string stage_unsupported_reason(const GptConfig& c, const TpOptions& options);

std::unique_ptr<StagePass> make_stage_pass(const GptConfig& c, TpSlice slice, int batch, int seq_len, int blocks,
                                           TensorOps ops, TpOptions options = {});

}  // namespace mics::model::cuda
