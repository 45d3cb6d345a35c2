// `mics train --device cuda`: the GPT on GPUs (model/cuda/gpt_cuda.hpp), the same data pipeline
// (io/), schedule and metrics as the CPU loop in trainer.cpp, AdamW on the device.
// One rank: the model steps itself. Several ranks (mics launch / -n, Slurm, mpirun): the GPU
// sharded engine (shard/cuda_engine.hpp) holds parameters, gradients and optimizer states
// sharded (ZeRO-3 / MiCS); the model gathers each unit before its forward and its backward and
// reduce-scatters each unit's gradient after its backward, over NCCL, or over the libfabric
// rails through pinned host memory when ranks share a GPU (comm/gpu_comm.hpp).
// Checkpoints (--ckpt-every, --resume, --init-from) are train/checkpoint.hpp's, through the
// engine's CheckpointState or, with one rank, OneGpuState below: the same logical files as the
// CPU trainer and the mesh, so each resumes the others'.
#include "train/cuda_trainer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/log.hpp"
#include "bootstrap/rank_env.hpp"
#include "comm/gpu_comm.hpp"
#include "comm/runtime.hpp"
#include "io/dataset.hpp"
#include "io/markov_corpus.hpp"
#include "io/token_shard.hpp"
#include "model/cuda/gpt_cuda.hpp"
#include "model/gpt.hpp"
#include "shard/cuda_engine.hpp"
#include "topo/groups.hpp"
#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/schedule.hpp"
#include "train/stop_signal.hpp"
#include "train/trainer.hpp"

namespace mics::train {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void bad(std::string message, std::string hint) {
  throw Error(ErrorKind::kInvalidArgument, std::move(message),
              {.layer = "train", .where = "mics train --device cuda", .hint = std::move(hint)});
}

std::string human(double bytes) { return fmt::format("{:.2f} GiB", bytes / (1ull << 30)); }

// The summary block, then what only a GPU run has: the step time, MFU per GPU, device memory
// and the per-kernel-kind profile (MICS_CUDA_PROFILE=1; rank 0's GPU with several ranks).
void print_gpu_summary(const Summary& sum, const model::cuda::DeviceSummary& dev, double flops_per_token, double n_no_wpe,
                       int steady_steps, double steady_seconds, int skip_timing, int steps_done, uint64_t peak_in_use,
                       uint64_t model_bytes, const std::vector<model::cuda::PhaseTime>& profile,
                       const std::string& graphs) {
  std::fputs(format_summary(sum).c_str(), stdout);
  const double tflops = sum.tokens_per_s / std::max(1, sum.world_size) * flops_per_token / 1e12;  // per GPU
  std::printf("  %-28s %s\n", "GPU", dev.name.c_str());

  std::printf("  %-28s %.1f ms (steady steps %d..%d)\n", "step time", steady_steps ? steady_seconds * 1e3 / steady_steps : 0.0,
              skip_timing + 1, steps_done);
  std::printf("  %-28s %.1f TFLOP/s, MFU %.1f%% of %s (6N+6LCT, N without wpe = %.1fM)\n", "model flops", tflops,
              100.0 * tflops / dev.peak_bf16_tflops, dev.peak_note.c_str(), n_no_wpe / 1e6);
  std::printf("  %-28s %s in use on the device after step 1 (model %s)\n", "device memory",
              human(static_cast<double>(peak_in_use)).c_str(), human(static_cast<double>(model_bytes)).c_str());
  std::printf("  %-28s %s\n", "CUDA graphs", graphs.c_str());
  if (!profile.empty()) {
    double total = 0;
    for (const auto& p : profile) total += p.ms;
    const int n = std::max(1, steady_steps);
    std::printf("  kernel time per step by kind (CUDA events, %d steady steps; total %.2f ms):\n", n, total / n);
    auto sorted = profile;
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.ms > b.ms; });
    for (const auto& p : sorted)
      std::printf("    %-32s %8.3f ms  %5.1f%%  (%d calls)\n", p.name.c_str(), p.ms / n, 100.0 * p.ms / total, p.calls / n);
  }
}

// The one-GPU model's state as a checkpoint sees it: every unit whole (the model's flat arrays
// are gpt.hpp's units at unit_offset), copied from the device range by range.
class OneGpuState final : public shard::CheckpointState {
 public:
  OneGpuState(model::cuda::CudaGpt& model, const model::Gpt& gpt) : model_(model), gpt_(gpt) {}
  std::vector<shard::StateRange> checkpoint_ranges() const override {
    std::vector<shard::StateRange> out;  // no pointers: copy_state reads the device
    for (int u = 0; u < gpt_.num_units(); ++u) out.push_back({u, 0, gpt_.unit_numel(u)});
    return out;
  }
  void copy_state(const shard::StateRange& r, int which, size_t offset, size_t count, float* dst) const override {
    model_.download_state(which, model_.unit_offset(r.unit) + offset, count, dst);
  }
  void load_state(const StateReader& read) override {
    std::vector<float> params(model_.num_params(), 0.0f), m(params.size(), 0.0f), v(params.size(), 0.0f);
    float* arrays[3] = {params.data(), m.data(), v.data()};
    for (int u = 0; u < gpt_.num_units(); ++u)
      for (int which = 0; which < 3; ++which)
        read(u, which, 0, gpt_.unit_numel(u), arrays[which] + model_.unit_offset(u));
    model_.upload_params(params.data());
    model_.upload_moments(m.data(), v.data());
  }
  shard::OptimizerCounters optimizer_counters() const override { return counters_; }
  void set_optimizer_counters(const shard::OptimizerCounters& counters) override { counters_ = counters; }
  int partition_size() const override { return 1; }
  void control_all_reduce(float*, size_t, ReduceOp) override {}  // one rank

  // After a step: AdamW's counters as the engines keep them.
  void count_step(bool skipped) {
    if (skipped)
      ++counters_.consecutive_skips;
    else
      counters_ = {counters_.steps + 1, 0};
  }

 private:
  model::cuda::CudaGpt& model_;
  const model::Gpt& gpt_;
  shard::OptimizerCounters counters_;
};

}  // namespace

int run_cuda_training(const TrainConfig& c) {
  validate(c);  // a wrong flag is reported before a missing GPU
  const bool multi = bootstrap::read_rank_env().world_size > 1;  // mics launch, Slurm, Open MPI, ...
  const std::string why = model::cuda::device_unavailable_reason();
  if (!why.empty())
    throw Error(ErrorKind::kUnavailable, why,
                {.layer = "train", .where = "mics train --device cuda", .hint = "run on a machine with an NVIDIA GPU, or use --device cpu"});
  const model::GptConfig mc = model::GptConfig::from_name(c.model);
  mc.validate();
  const model::Gpt gpt(mc);
  const int T = c.seq_len > 0 ? c.seq_len : mc.max_seq;
  if (T > mc.max_seq) bad(fmt::format("--seq-len {} is longer than the model's context ({})", T, mc.max_seq), "use a shorter --seq-len");

  // data: as the CPU loop (trainer.cpp): the shards named by --data, or the embedded corpus
  std::vector<std::string> train_files, val_files;
  std::string origin;
  double entropy_floor = -1;
  if (c.data.empty()) {
    const std::string dir = ensure_embedded_corpus();
    train_files = io::expand_shard_glob(dir + "/synth_train_*.bin");
    val_files = io::expand_shard_glob(dir + "/synth_val_*.bin");
    entropy_floor = io::read_entropy_floor(dir);
    origin = "embedded synthetic corpus in " + dir;
  } else {
    train_files = io::expand_shard_glob(c.data);
    origin = c.data;
    std::string guess = !c.eval_data.empty() ? c.eval_data : c.data;
    if (c.eval_data.empty())
      for (size_t at = guess.find("train"); at != std::string::npos; at = guess.find("train", at + 3)) guess.replace(at, 5, "val");
    if (!c.eval_data.empty() || guess != c.data) {
      try {
        val_files = io::expand_shard_glob(guess);
      } catch (const Error&) {
        if (!c.eval_data.empty()) throw;
      }
    }
    entropy_floor = io::read_entropy_floor(fs::path(train_files.front()).parent_path().string());
  }
  const io::TokenDataset train_data(train_files, mc.vocab, T);
  std::unique_ptr<io::TokenDataset> val_data;
  if (!val_files.empty()) val_data = std::make_unique<io::TokenDataset>(val_files, mc.vocab, T);

  model::cuda::CudaOptions options;
  options.profile = knobs().cuda_profile;
  options.flash_attention = knobs().cuda_flash;
  options.cudnn_attention = knobs().cuda_cudnn_attention;
  options.cudnn_deterministic = knobs().cuda_cudnn_deterministic;
  options.fused_epilogues = knobs().cuda_epilogues;
  options.flash_bwd_stages = static_cast<int>(knobs().cuda_flash_bwd_stages);
  options.flash_bwd_min_blocks = static_cast<int>(knobs().cuda_flash_bwd_min_blocks);
  options.flash_bwd_key_tile = static_cast<int>(knobs().cuda_flash_bwd_keys);
  options.recompute = c.recompute;
  options.gemm_autotune = static_cast<int>(knobs().cuda_gemm_tune);
  options.overlap_weight_grads = knobs().cuda_overlap_wgrad;
  options.residual_grad_bf16 = knobs().cuda_residual_grad_bf16;
  options.residual_bf16 = knobs().cuda_residual_bf16;
  options.cuda_graphs = knobs().cuda_graphs;
  // Several ranks: join the job, pick this rank's GPU and the GPU collectives' backend.
  std::unique_ptr<comm::Runtime> rt;
  int rank = 0, world = 1;
  comm::GpuBackendChoice backend;
  if (multi) {
    rt = comm::Runtime::start(fmt::format("train cuda model={} strategy={} p={} S={} B={} T={} steps={} seed={} lr={} clip={} wd={}",
                                          c.model, c.strategy, c.partition_size, c.grad_accum, c.micro_batch, T, c.steps,
                                          c.seed, c.lr, c.clip, c.weight_decay));
    rank = rt->rank();
    world = rt->world_size();
    log::set_rank(rank);
    if (c.partition_size == "auto")
      bad("--partition-size auto is not built for --device cuda", "give a partition size (or 0: the ranks per node)");
    if (c.comm_dtype != "f32")
      bad(fmt::format("--comm-dtype {} is not built for --device cuda", c.comm_dtype), "use --comm-dtype f32");
    const int device = comm::select_gpu_device(*rt);
    backend = comm::choose_gpu_backend(*rt, device);
  }
  const bool leader = rank == 0;
  if (multi) options.shard_pad = world;  // no full-model arrays: per-unit working buffers
  model::cuda::CudaGpt model(mc, c.micro_batch, T, options);
  if (!multi) {
    std::vector<float> flat(model.num_params());
    for (int u = 0; u < gpt.num_units(); ++u) gpt.init_unit(u, c.seed, flat.data() + model.unit_offset(u));
    model.upload_params(flat.data());
  }
  std::unique_ptr<shard::CudaEngine> engine;
  if (multi) {
    shard::CudaEngineOptions eo;
    eo.strategy = topo::parse_strategy(c.strategy);
    eo.partition_size = std::stoi(c.partition_size);
    eo.grad_accum = c.grad_accum;
    eo.beta1 = 0.9f;
    eo.beta2 = 0.95f;
    eo.eps = 1e-8f;
    eo.weight_decay = c.weight_decay;
    eo.clip_norm = c.clip;
    eo.backend = backend.backend;
    eo.gather_dtype = c.gather_dtype == "bf16" ? DType::kBF16 : DType::kF32;
    std::vector<size_t> units;
    for (int u = 0; u < gpt.num_units(); ++u) units.push_back(gpt.unit_numel(u));
    engine = std::make_unique<shard::CudaEngine>(*rt, eo, units, model.device_optimizer());
    engine->finalize([&](int u, float* host) { gpt.init_unit(u, c.seed, host); });
    model.set_unit_source(engine->unit_source());
  }
  // The state a checkpoint saves and loads (train/checkpoint.hpp): the engine's shards, or the
  // one-GPU model's arrays. --resume / --init-from load into it here (collective).
  std::unique_ptr<OneGpuState> one_gpu;
  if (!engine) one_gpu = std::make_unique<OneGpuState>(model, gpt);
  shard::CheckpointState& state = engine ? static_cast<shard::CheckpointState&>(*engine) : *one_gpu;
  std::string loaded_from;
  const int start_step = load_initial_state(state, c, gpt, plain_layout(state, gpt, rank, world), T, &loaded_from);
  const model::cuda::DeviceSummary dev = model::cuda::device_summary();
  const uint64_t tokens_per_step = static_cast<uint64_t>(world) * c.grad_accum * c.micro_batch * T;
  // MFU as the peers quote it: 6N + 6LCT per token, N without the position table.
  const double n_no_wpe = static_cast<double>(mc.num_params()) - static_cast<double>(mc.max_seq) * mc.channels;
  const double flops_per_token = 6.0 * n_no_wpe + 6.0 * mc.layers * mc.channels * T;
  const int warmup = c.warmup < 0 ? std::max(1, c.steps / 20) : c.warmup;
  if (leader) {
  std::printf("mics train: %s (%s) on %s (%s)\n", c.model.c_str(), mc.describe().c_str(), dev.name.c_str(),
              human(static_cast<double>(dev.memory_bytes)).c_str());
  if (engine)
    std::printf("  device cuda, %d ranks: %s p=%d r=%d | GPU collectives: %s\n", world, c.strategy.c_str(),
                engine->partition_size(), engine->replicas(), backend.reason.c_str());
  std::printf("  device cuda, %d rank%s | bf16 compute, fp32 master weights and accumulation, residual stream %s, "
              "its gradient %s | attention: %s%s\n",
              world, world == 1 ? "" : "s", options.residual_bf16 ? "bf16" : "fp32",
              options.residual_grad_bf16 ? "bf16" : "fp32", model.attention_kind().c_str(),
              c.recompute ? " | recompute: blocks keep their inputs only" : "");
  std::printf("  batch: %d ranks x %d micro-steps x %d sequences x %d tokens = %llu tokens per step; %d steps\n", world,
              c.grad_accum, c.micro_batch, T, static_cast<unsigned long long>(tokens_per_step), c.steps);
  std::printf("  optimizer: AdamW lr %.2e (warm-up %d, cosine to %.2e), weight decay %g, clip %g\n", c.lr, warmup,
              c.lr * c.min_lr_ratio, c.weight_decay, c.clip);
  std::printf("  data: %s (%llu sequences; eval: %s)\n", origin.c_str(),
              static_cast<unsigned long long>(train_data.num_sequences()),
              val_data ? fmt::format("{} sequences", val_data->num_sequences()).c_str() : "none");
  std::printf("  device memory allocated by the model: %s\n", human(static_cast<double>(model.allocated_bytes())).c_str());
  if (!loaded_from.empty()) std::printf("  loaded %s; continuing at step %d\n", loaded_from.c_str(), start_step + 1);
  if (c.samples > 0)
    std::printf("  samples: not drawn by the GPU trainer (--samples %d ignored): save with --out DIR --ckpt-every N "
                "and export (`mics ckpt export`), or train with --device cpu or a mesh\n",
                c.samples);
  if (engine)
    std::printf("  model states per rank: %s (fp32 params + grads + 2 moments of %zu shard floats); working buffers: %s "
                "(unit 0 + 2 block slots gathered, unit 0 + 2 block gradients)\n",
                human(static_cast<double>(engine->model_state_bytes())).c_str(), engine->shard_size(),
                human(static_cast<double>(model.working_buffer_bytes())).c_str());
  std::fflush(stdout);
  }

  std::unique_ptr<MetricsWriter> metrics;
  std::string metrics_path = c.metrics;
  if (metrics_path.empty() && !c.out.empty()) metrics_path = c.out + "/metrics.jsonl";
  if (!c.out.empty() && leader) {
    std::error_code ec;
    fs::create_directories(c.out, ec);
    if (ec)
      throw Error(ErrorKind::kIo, fmt::format("cannot create --out {}: {}", c.out, ec.message()),
                  {.layer = "train", .where = "mics train --device cuda", .hint = "choose a writable directory"});
  }
  if (!metrics_path.empty() && leader) metrics = std::make_unique<MetricsWriter>(metrics_path);

  StopSignal stop;
  const LrSchedule schedule{c.lr, warmup, c.steps, c.min_lr_ratio};
  const io::Sampler sampler(train_data.num_sequences(), c.seed);
  io::Prefetcher prefetcher(train_data, sampler, rank, world, c.grad_accum, c.micro_batch,
                            static_cast<uint64_t>(start_step));
  Checkpointer ckpt(state, c, gpt, plain_layout(state, gpt, rank, world), T, start_step, loaded_from);
  StepPrinter printer(leader, c.steps, c.log_every);
  model::cuda::AdamWConfig adam;
  adam.beta1 = 0.9f;
  adam.beta2 = 0.95f;
  adam.eps = 1e-8f;
  adam.weight_decay = c.weight_decay;
  adam.clip = c.clip;
  bool stopped = false;
  uint64_t peak_in_use = 0;
  // The first steps of a run (fresh or resumed) warm up (allocations, cuBLASLt's heuristics):
  // left out of tokens/s and of the profile.
  // Forward-only loss over the first --eval-batches micro-batches of the validation set (the same
  // on every rank; with the sharded engine a gather per unit per batch, counted in
  // eval_passes so that the traffic check leaves them out).
  int eval_passes = 0;
  auto evaluate = [&] {
    std::vector<int32_t> in(static_cast<size_t>(c.micro_batch) * T), tg(in.size());
    double sum = 0;
    for (int b = 0; b < c.eval_batches; ++b) {
      for (int row = 0; row < c.micro_batch; ++row) {
        const uint64_t index = static_cast<uint64_t>(b) * c.micro_batch + row;
        val_data->sequence(index % val_data->num_sequences(), in.data() + static_cast<size_t>(row) * T,
                           tg.data() + static_cast<size_t>(row) * T);
      }
      sum += model.forward_loss(in.data(), tg.data());
    }
    eval_passes += c.eval_batches;
    return sum / c.eval_batches;
  };
  const int skip_timing = start_step + std::min(3, std::max(0, c.steps - start_step - 1));
  RunTally tally(tokens_per_step, skip_timing);
  for (int step = start_step; step < c.steps; ++step) {
    const auto t0 = Clock::now();
    const double wait_before = prefetcher.wait_seconds();
    adam.lr = schedule.at(step);
    model.zero_grads();
    model::cuda::StepResult r;
    bool stop_agreed = false;
    if (!engine) {
      for (int m = 0; m < c.grad_accum; ++m) {
        io::MicroBatch mb = prefetcher.next();
        model.forward_backward(mb.inputs.data(), mb.targets.data());
      }
      r = model.step(adam, step + 1, c.grad_accum);
      one_gpu->count_step(r.skipped);
    } else {
      for (int m = 0; m < c.grad_accum; ++m) {
        io::MicroBatch mb = prefetcher.next();
        model.forward_backward(mb.inputs.data(), mb.targets.data());  // gathers, reduce-scatters per unit
      }
      const float local_loss = model.accumulated_loss();
      const shard::CudaStepReport er = engine->step(adam.lr, model.stream());
      float control[2] = {local_loss, stop.requested() ? 1.0f : 0.0f};
      engine->control_all_reduce(control, 2, ReduceOp::kSum);
      r.loss = control[0] / static_cast<double>(world);
      r.grad_norm = er.grad_norm;
      r.skipped = er.skipped;
      stop_agreed = control[1] > 0;
    }
    const double step_s = seconds_since(t0);
    if (step == start_step) peak_in_use = model::cuda::device_memory_in_use();
    if (step == skip_timing - 1 || (skip_timing == start_step && step == start_step)) {
      (void)model.take_profile();  // the profile counts steady steps only
    }
    StepRecord rec = tally.add(step, r.loss, adam.lr, r.grad_norm, r.skipped, step_s, 0.0);
    rec.data_wait_ms = (prefetcher.wait_seconds() - wait_before) * 1e3;
    if (val_data && c.eval_every > 0 && c.eval_batches > 0 && (step + 1) % c.eval_every == 0 && step + 1 < c.steps)
      rec.eval_loss = evaluate();
    {
      const auto ckpt_t0 = Clock::now();  // the step's checkpoint stall (the snapshot, or a blocking save)
      ckpt.after_step(step + 1);
      rec.checkpoint_ms = seconds_since(ckpt_t0) * 1e3;
    }
    if (report_step(printer, metrics.get(), rec, engine ? stop_agreed : stop.requested())) {
      stopped = true;
      break;
    }
  }
  printer.finish();
  const int steps_done = tally.steps(), steady_steps = tally.steady_steps();
  ckpt.finish(start_step + steps_done);
  const auto profile = model.take_profile();
  const double steady_seconds = tally.steady_seconds();
  const comm::Traffic train_traffic = engine ? engine->traffic() : comm::Traffic{};  // before the final eval's gathers
  const int train_eval_passes = eval_passes;

  double eval_loss = NAN;
  if (val_data && !stopped && c.eval_batches > 0) eval_loss = evaluate();

  Summary sum;
  sum.strategy = engine ? fmt::format("{} on GPUs (p={}, r={}, {} collectives)", c.strategy, engine->partition_size(),
                                       engine->replicas(), comm::to_string(engine->backend()))
                        : "single GPU";
  sum.model = c.model;
  sum.grad_accum = c.grad_accum;
  sum.micro_batch = c.micro_batch;
  sum.seq_len = T;
  tally.fill(sum);
  sum.stopped_early = stopped;
  sum.eval_loss = eval_loss;
  sum.entropy_floor = entropy_floor;
  sum.traffic_matches_model = true;
  sum.model_state_bytes_per_rank = static_cast<uint64_t>(model.num_params()) * 18;
  if (engine) {
    const comm::Traffic got = train_traffic;
    const comm::Traffic want = engine->expected_traffic(steps_done, train_eval_passes);
    sum.traffic_matches_model = got.bytes_sent == want.bytes_sent;
    const double n = std::max(1, steps_done);
    sum.intra_node_bytes_per_step = static_cast<double>(got.bytes(fabric::Rail::kIntra)) / n;
    sum.inter_node_bytes_per_step = static_cast<double>(got.bytes(fabric::Rail::kInter)) / n;
    // fp32 params, grads and both moments of this rank's shards (16 B per shard element); the
    // model's per-unit working buffers are printed beside it
    sum.model_state_bytes_per_rank = engine->model_state_bytes();
    if (!sum.traffic_matches_model)
      log::warn("GPU engine traffic: got intra {} inter {} bytes, the formula says intra {} inter {}",
                got.bytes(fabric::Rail::kIntra), got.bytes(fabric::Rail::kInter), want.bytes(fabric::Rail::kIntra),
                want.bytes(fabric::Rail::kInter));
  }
  sum.params = mc.num_params();
  sum.flops_per_token = mc.flops_per_token(T);
  sum.world_size = world;
  if (engine) {
    sum.nodes = rt->topology().num_nodes;
    sum.partition_size = engine->partition_size();
  }
  if (metrics) metrics->summary(sum);
  if (leader)
    print_gpu_summary(sum, dev, flops_per_token, n_no_wpe, steady_steps, steady_seconds, skip_timing,
                      start_step + steps_done, peak_in_use, model.allocated_bytes(), profile, model.graph_status());
  std::fflush(stdout);
  if (engine) {
    engine.reset();
    rt->finish();
  }
  return 0;
}

}  // namespace mics::train
