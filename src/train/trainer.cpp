#include "train/trainer.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/log.hpp"
#include "comm/clock_sync.hpp"
#include "comm/runtime.hpp"
#include "io/dataset.hpp"
#include "io/markov_corpus.hpp"
#include "model/gpt.hpp"
#include "obs/observer.hpp"
#include "shard/engine.hpp"
#include "topo/groups.hpp"
#include "train/checkpoint.hpp"
#include "train/cuda_trainer.hpp"
#include "train/mesh_trainer.hpp"
#include "train/metrics.hpp"
#include "train/sampling.hpp"
#include "train/schedule.hpp"
#include "train/stop_signal.hpp"

namespace mics::train {

namespace fs = std::filesystem;

namespace {

// The embedded corpus: an order-1 Markov source over 64 of the 256 byte ids, 4 successors per
// state (io/markov_corpus.hpp). Fixed, so every run and every machine sees the same.
constexpr size_t kIntraRail = static_cast<size_t>(fabric::Rail::kIntra);
constexpr size_t kInterRail = static_cast<size_t>(fabric::Rail::kInter);

constexpr uint64_t kEmbeddedTrainTokens = 4'000'000;
constexpr uint64_t kEmbeddedValTokens = 131'072;
io::MarkovSpec embedded_spec() {
  io::MarkovSpec spec;
  spec.vocab = 256;
  spec.states = 64;
  spec.branching = 4;
  spec.seed = 20241201;
  spec.first_token = '0';  // ids 48..111: digits, punctuation and letters, so samples print as text
  return spec;
}

[[noreturn]] void bad_input(std::string message, std::string hint) {
  throw Error(ErrorKind::kInvalidArgument, std::move(message), {.layer = "train", .where = "mics train", .hint = std::move(hint)});
}

std::string gib(uint64_t bytes) { return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1u << 30)); }
std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1u << 20)); }

uint64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

uint64_t peak_rss_bytes() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // Linux: KiB
}

struct DataPlan {
  std::vector<std::string> train, val;
  double entropy_floor = -1;  // nats per token; < 0: unknown
  std::string origin;
};

DataPlan plan_data(const TrainConfig& c) {
  DataPlan plan;
  if (c.data.empty()) {
    const std::string dir = ensure_embedded_corpus();
    plan.train = io::expand_shard_glob(dir + "/synth_train_*.bin");
    plan.val = io::expand_shard_glob(dir + "/synth_val_*.bin");
    plan.entropy_floor = io::read_entropy_floor(dir);
    plan.origin = fmt::format("embedded synthetic corpus in {}", dir);
    return plan;
  }
  plan.train = io::expand_shard_glob(c.data);
  plan.origin = c.data;
  if (!c.eval_data.empty()) {
    plan.val = io::expand_shard_glob(c.eval_data);
  } else if (c.data.find("train") != std::string::npos) {
    std::string guess = c.data;
    for (size_t at = guess.find("train"); at != std::string::npos; at = guess.find("train", at + 3))
      guess.replace(at, 5, "val");
    try {
      plan.val = io::expand_shard_glob(guess);
    } catch (const Error&) {
      plan.val.clear();  // no validation shards next to the training ones: no eval loss
    }
  }
  plan.entropy_floor = io::read_entropy_floor(fs::path(plan.train.front()).parent_path().string());
  return plan;
}

// Bytes per rank the run will hold: what the memory plan prints and the budget checks.
struct MemoryPlan {
  int partition_size = 1;
  uint64_t model_states = 0;  // fp32 master + grad accumulator + 2 AdamW moments, this rank's share
  uint64_t gathered = 0;      // unit 0 held through the backward, plus a block and its prefetch
  uint64_t grad_buffers = 0;  // the full-size gradients of unit 0 and one block
  uint64_t activations = 0;
  uint64_t total() const { return model_states + gathered + grad_buffers + activations; }
};

MemoryPlan plan_memory(const model::Gpt& gpt, int p, int world, int micro_batch, int seq_len, bool recompute) {
  MemoryPlan m;
  m.partition_size = p;
  const auto padded = [world](uint64_t n) { return (n + world - 1) / world * world; };
  const uint64_t unit0 = gpt.unit_numel(0), block = gpt.num_units() > 1 ? gpt.unit_numel(1) : 0;
  for (int u = 0; u < gpt.num_units(); ++u)
    m.model_states += 16 * (p == 1 ? gpt.unit_numel(u) : padded(gpt.unit_numel(u)) / p);
  m.gathered = p == 1 ? 0 : 4 * (padded(unit0) + 2 * padded(block));
  m.grad_buffers = 4 * (unit0 + block);
  m.activations = gpt.activation_bytes(micro_batch, seq_len, recompute);
  return m;
}

// A rank's forward over one micro-batch up to the loss (gathering every unit; no gradients).
float forward_loss(shard::Engine& engine, model::GptPass& pass, int layers, obs::Observer* ob = nullptr) {
  const float* unit0 = engine.gather(0);
  {
    obs::ScopedSpan span(ob, "compute", "forward embed");
    pass.embed_forward(unit0);
  }
  engine.prefetch(layers > 0 ? 1 : 0);
  engine.release(0);
  for (int l = 0; l < layers; ++l) {
    const float* block = engine.gather(1 + l);
    engine.prefetch(l + 1 < layers ? 2 + l : 0);
    obs::ScopedSpan span(ob, "compute", "forward block", l);
    pass.block_forward(l, block);
    engine.release(1 + l);
  }
  const float* head = engine.gather(0);
  obs::ScopedSpan span(ob, "compute", "forward head+loss");
  const float loss = pass.head_forward(head);
  return loss;
}

// One micro-step: forward, loss, backward, gradients handed to the engine.
float train_micro_step(shard::Engine& engine, model::GptPass& pass, int layers, std::vector<float>& grad0,
                       std::vector<float>& grad_block, obs::Observer* ob = nullptr) {
  const float loss = forward_loss(engine, pass, layers, ob);
  const float* unit0 = engine.gather(0);  // held until the embedding's backward
  if (layers > 0) engine.prefetch(layers);
  {
    obs::ScopedSpan span(ob, "compute", "backward head");
    pass.head_backward(unit0, grad0.data());
  }
  for (int l = layers - 1; l >= 0; --l) {
    const float* block = engine.gather(1 + l);
    if (l > 0) engine.prefetch(l);
    {
      obs::ScopedSpan span(ob, "compute", "backward block", l);
      pass.block_backward(l, block, grad_block.data());
    }
    engine.release(1 + l);
    engine.reduce_gradients(1 + l, grad_block.data());
  }
  obs::ScopedSpan span(ob, "compute", "backward embed");
  pass.embed_backward(unit0, grad0.data());
  engine.release(0);
  engine.reduce_gradients(0, grad0.data());
  return loss;
}

struct EvalResult {
  double loss = NAN;
  double seconds = 0;
};

// The mean loss over eval_batches micro-batches per rank of the validation sequences, the same
// on every rank. Sequences i*world + rank (wrapping), in order: a fixed set every time.
EvalResult evaluate(shard::Engine& engine, const model::Gpt& gpt, const io::TokenDataset& val, int rank, int world,
                    int micro_batch, int batches) {
  const auto t0 = Clock::now();
  const int T = val.seq_len();
  model::GptPass pass(gpt, micro_batch, T, /*recompute=*/false);
  std::vector<int32_t> inputs(static_cast<size_t>(micro_batch) * T), targets(inputs.size());
  double sum = 0;
  for (int b = 0; b < batches; ++b) {
    for (int row = 0; row < micro_batch; ++row) {
      const uint64_t index = (static_cast<uint64_t>(b) * micro_batch + row) * world + rank;
      val.sequence(index % val.num_sequences(), inputs.data() + static_cast<size_t>(row) * T,
                   targets.data() + static_cast<size_t>(row) * T);
    }
    pass.set_tokens(inputs.data(), targets.data());
    sum += forward_loss(engine, pass, gpt.config().layers);
    engine.release(0);
  }
  float total = static_cast<float>(sum / batches);
  engine.control_all_reduce(&total, 1, ReduceOp::kSum);
  return {static_cast<double>(total) / world, seconds_since(t0)};
}

// Continuations of a prompt, one row per sample: row 0 greedy, the others at temperature 0.8.
// Every rank runs it (the engine's gathers are collective) with the same random stream.
std::vector<std::vector<int32_t>> sample(shard::Engine& engine, const model::Gpt& gpt, const std::vector<int32_t>& prompt,
                                         int rows, int new_tokens, uint64_t seed) {
  const int V = gpt.config().vocab;
  const int window = std::min<int>(gpt.config().max_seq, static_cast<int>(prompt.size()) + new_tokens);
  model::GptPass pass(gpt, rows, window, /*recompute=*/false);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(rows), prompt);
  std::vector<int32_t> inputs(static_cast<size_t>(rows) * window);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  auto uniform = [&state] {
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    return static_cast<double>((state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
  };
  for (int t = 0; t < new_tokens; ++t) {
    int pos = 0;
    for (int r = 0; r < rows; ++r) {
      const auto& s = seqs[static_cast<size_t>(r)];
      const int len = static_cast<int>(s.size());
      const int start = std::max(0, len - window);
      pos = len - start - 1;
      std::fill(inputs.begin() + static_cast<long>(r) * window, inputs.begin() + static_cast<long>(r + 1) * window, 0);
      std::copy(s.begin() + start, s.end(), inputs.begin() + static_cast<long>(r) * window);
    }
    pass.set_tokens(inputs.data(), nullptr);
    forward_loss(engine, pass, gpt.config().layers);
    engine.release(0);
    for (int r = 0; r < rows; ++r) {
      const float* logits = pass.logits() + (static_cast<size_t>(r) * window + pos) * V;
      const int32_t next = r == 0 ? greedy_token(logits, V) : sample_token(logits, V, 0.8, uniform());
      seqs[static_cast<size_t>(r)].push_back(next);
    }
  }
  return seqs;
}

std::string thousands(double value) {
  std::string digits = fmt::format("{:.0f}", value), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace

std::string ensure_embedded_corpus() {
  std::string root = knobs().data_dir;
  if (root.empty()) {
    const char* home = std::getenv("HOME");
    root = std::string(home && *home ? home : "/tmp") + "/.cache/mics";
  }
  const io::MarkovSpec spec = embedded_spec();
  const std::string dir = fmt::format("{}/synth-markov-s{}-k{}-b{}-f{}-{}", root, spec.seed, spec.states, spec.branching,
                                      spec.first_token, kEmbeddedTrainTokens);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec)
    throw Error(ErrorKind::kIo, fmt::format("cannot create {}: {}", root, ec.message()),
                {.layer = "train", .where = "the embedded corpus", .hint = "set MICS_DATA_DIR to a writable directory, or pass --data"});
  io::write_synthetic_corpus(dir, spec, kEmbeddedTrainTokens, kEmbeddedValTokens);
  return dir;
}

namespace {

// What every rank (and the `-n` parent, before it launches them) checks first.
struct Prepared {
  model::Gpt gpt;
  int seq_len = 0;
  DataPlan data;
  std::unique_ptr<io::TokenDataset> train, val;
};

Prepared prepare(const TrainConfig& c) {
  validate(c);
  Prepared pr{model::Gpt(model::GptConfig::from_name(c.model)), 0, {}, nullptr, nullptr};
  const model::GptConfig& mc = pr.gpt.config();
  pr.seq_len = c.seq_len > 0 ? c.seq_len : mc.max_seq;
  if (pr.seq_len > mc.max_seq)
    bad_input(fmt::format("--seq-len {} is longer than the model's context ({} positions)", pr.seq_len, mc.max_seq),
              fmt::format("use --seq-len {} or less, or a model with a longer context (T{} in a free size)", mc.max_seq,
                          pr.seq_len));
  pr.data = plan_data(c);
  pr.train = std::make_unique<io::TokenDataset>(pr.data.train, mc.vocab, pr.seq_len);
  if (!pr.data.val.empty()) pr.val = std::make_unique<io::TokenDataset>(pr.data.val, mc.vocab, pr.seq_len);
  return pr;
}

uint64_t memory_budget(const TrainConfig& c, int ranks_here) {
  return !c.memory_budget.empty() ? parse_bytes(c.memory_budget, "--memory-budget")
                                  : available_memory_bytes() * 9 / 10 / static_cast<uint64_t>(std::max(1, ranks_here));
}

// Throws when the plan for partition size p does not fit the budget.
void check_memory(const TrainConfig& c, const model::Gpt& gpt, int p, int world, int seq_len, uint64_t budget) {
  const MemoryPlan mp = plan_memory(gpt, p, world, c.micro_batch, seq_len, c.recompute);
  if (mp.total() <= budget) return;
  bad_input(fmt::format("model {} ({}) needs {} per rank with {} p={} (states {}, gathered {}, gradients {}, "
                        "activations {}) but the budget is {}",
                        c.model, gpt.config().describe(), gib(mp.total()), c.strategy, p, gib(mp.model_states),
                        gib(mp.gathered), gib(mp.grad_buffers), gib(mp.activations), gib(budget)),
            "shard wider (--strategy zero3, or mics with a larger --partition-size or 'auto'), use --recompute or a "
            "smaller --micro-batch, or raise --memory-budget if the memory is really there");
}

// Per-rank counts of steps named straggler and their delays, for the summary.
struct StragglerTally {
  explicit StragglerTally(int world) : steps(static_cast<size_t>(world)), delay_ms(static_cast<size_t>(world)) {}
  std::vector<int> steps;
  std::vector<double> delay_ms;
  double max_spread_ms = 0;
};

// control[0] summed over ranks, control[1] the max over ranks, and the straggler exchange, in
// one max all-reduce: [straggler payload | control[0] in the rank's own slot | control[1]].
obs::StragglerResult exchange_control(shard::Engine& engine, obs::Observer& observer, float control[2]) {
  std::vector<float> v = observer.straggler_payload();
  const size_t at = v.size(), world = static_cast<size_t>(observer.world());
  v.resize(at + world + 1, -3.0e38f);
  v[at + static_cast<size_t>(observer.rank())] = control[0];
  v[at + world] = control[1];
  if (world > 1) engine.control_all_reduce(v.data(), v.size(), ReduceOp::kMax);
  float sum = 0;
  for (size_t r = 0; r < world; ++r) sum += v[at + r];
  control[0] = sum;
  control[1] = v[at + world];
  v.resize(at);
  return observer.finish_straggler(v);
}

void fill_observed(StepRecord& rec, const obs::StragglerResult& s, const obs::Observer& observer, StragglerTally& tally) {
  rec.straggler_rank = s.rank;
  rec.straggler_delay_ms = s.delay_ms;
  rec.arrival_spread_ms = s.spread_ms;
  const auto bytes = observer.window_rail_bytes();
  rec.intra_bytes = static_cast<double>(bytes[0]);
  rec.inter_bytes = static_cast<double>(bytes[1]);
  if (s.rank >= 0) {
    ++tally.steps[static_cast<size_t>(s.rank)];
    tally.delay_ms[static_cast<size_t>(s.rank)] += s.delay_ms;
  }
  tally.max_spread_ms = std::max(tally.max_spread_ms, s.spread_ms);
}

// The summary's "collectives" (rank 0's records per op and size bucket, and whether every
// rank's record totals equal its fabric counters) and "stragglers". Collective: every rank.
std::string observed_summary(shard::Engine& engine, obs::Observer& observer, fabric::Transport& transport,
                             const StragglerTally& tally) {
  nlohmann::json j;
  j["collectives"] = nlohmann::json::parse(observer.log().summary_json());
  const auto base = observer.fabric_baseline();
  const auto recorded = observer.log().rail_totals();
  const uint64_t fabric_intra = transport.counters(fabric::Rail::kIntra).bytes_sent - base[0];
  const uint64_t fabric_inter = transport.counters(fabric::Rail::kInter).bytes_sent - base[1];
  float mismatch = recorded[0] == fabric_intra && recorded[1] == fabric_inter ? 0.0f : 1.0f;
  j["collectives"]["fabric_rail_bytes"] = {fabric_intra, fabric_inter};
  engine.control_all_reduce(&mismatch, 1, ReduceOp::kMax);
  j["collectives"]["records_match_fabric"] = mismatch == 0.0f;
  j["clock_sync"] = {{"offset_ns", observer.clock().offset_ns}, {"rtt_ns", observer.clock().rtt_ns}};
  j["stragglers"] = nlohmann::json::array();
  for (size_t r = 0; r < tally.steps.size(); ++r)
    if (tally.steps[r] > 0)
      j["stragglers"].push_back({{"rank", r}, {"steps", tally.steps[r]}, {"delay_ms", tally.delay_ms[r]}});
  j["max_arrival_spread_ms"] = tally.max_spread_ms;
  return j.dump();
}

}  // namespace

void preflight(const TrainConfig& c, int world, int ranks_per_node, int ranks_on_this_host) {
  const Prepared pr = prepare(c);
  if (c.tensor_parallel > 1 || c.pipeline_parallel > 1) return mesh_preflight(c, pr.gpt.config(), world, ranks_per_node);
  if (c.partition_size == "auto") return;  // the ranks choose p from the budget
  const int p = topo::resolve_partition_size(topo::parse_strategy(c.strategy), std::stoi(c.partition_size), world,
                                             ranks_per_node);
  check_memory(c, pr.gpt, p, world, pr.seq_len, memory_budget(c, ranks_on_this_host));
}

int run_training(const TrainConfig& c) {
  const bool mesh = c.tensor_parallel > 1 || c.pipeline_parallel > 1;
  if (c.device == "cuda" && !mesh) return run_cuda_training(c);
  // --- everything that can be checked before the job starts ---------------------------
  const Prepared pr = prepare(c);
  const model::Gpt& gpt = pr.gpt;
  const model::GptConfig& mc = gpt.config();
  const int T = pr.seq_len;
  const DataPlan& data_plan = pr.data;
  const io::TokenDataset& train_data = *pr.train;
  const io::TokenDataset* val_data = pr.val.get();
  if (c.tensor_parallel > 1 || c.pipeline_parallel > 1) return run_mesh_training(c, gpt, T, train_data, val_data);

  auto rt = comm::Runtime::start("train " + describe(c));
  const int rank = rt->rank(), world = rt->world_size();
  log::set_rank(rank);
  const bool leader = rank == 0;
  const auto& topology = rt->topology();
  const int per_node = topology.uniform_ranks_per_node() ? topology.uniform_ranks_per_node() : world;

  // --threads, else OMP_NUM_THREADS as users of OpenMP programs expect, else the cores this host
  // has per rank.
  const int omp_env = [] {
    const char* v = std::getenv("OMP_NUM_THREADS");
    return v ? std::atoi(v) : 0;
  }();
  const int threads = c.threads > 0 ? c.threads
                      : omp_env > 0 ? omp_env
                                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, ranks_on_host()));
  model::set_compute_threads(threads);

  // --- observability: the common clock, per-collective records, the trace (obs/) ----------
  obs::Observer observer(rank, world);
  observer.set_clock(comm::sync_clocks(rt->world()));
  if (!c.trace.empty()) observer.enable_trace({static_cast<size_t>(knobs().trace_max_events), 2});
  observer.set_fabric_baseline({rt->transport().counters(fabric::Rail::kIntra).bytes_sent,
                                rt->transport().counters(fabric::Rail::kInter).bytes_sent});
  rt->world().set_observer(&observer);  // and every communicator the engine splits from it
  StragglerTally stragglers(world);

  // --- memory plan and the engine -------------------------------------------------------
  const topo::Strategy strategy = topo::parse_strategy(c.strategy);
  const bool auto_partition = c.partition_size == "auto";
  const uint64_t budget = memory_budget(c, ranks_on_host());
  shard::EngineOptions eo;
  eo.strategy = strategy;
  eo.partition_size = auto_partition ? shard::EngineOptions::kAutoPartition : std::stoi(c.partition_size);
  eo.memory_budget_bytes = budget;
  eo.grad_accum = c.grad_accum;
  eo.lr = c.lr;
  eo.beta1 = 0.9f;
  eo.beta2 = 0.95f;
  eo.eps = 1e-8f;
  eo.weight_decay = c.weight_decay;
  eo.clip_norm = c.clip;
  eo.comm_dtype = c.comm_dtype == "bf16" ? DType::kBF16 : DType::kF32;
  // The engine's automatic choice counts two gathered units; the trainer also holds unit 0
  // and two full-size gradient buffers: add them to the activation estimate it is given.
  eo.activation_bytes = gpt.activation_bytes(c.micro_batch, T, c.recompute) + 4 * (2 * gpt.unit_numel(0) + gpt.unit_numel(1));
  int p = 0;
  if (!auto_partition) {
    p = topo::resolve_partition_size(strategy, eo.partition_size, world, per_node);
    check_memory(c, gpt, p, world, T, budget);
  }
  shard::Engine engine(*rt, eo);
  for (int u = 0; u < gpt.num_units(); ++u) engine.add_unit(gpt.unit_name(u), gpt.unit_numel(u));
  engine.finalize([&](int unit, float* params) { gpt.init_unit(unit, c.seed, params); });
  p = engine.partition_size();
  std::string loaded_from;  // --resume / --init-from (train/checkpoint.hpp)
  const int start_step = load_initial_state(engine, c, gpt, plain_layout(engine, gpt, rank, world), T, &loaded_from);
  const MemoryPlan mp = plan_memory(gpt, p, world, c.micro_batch, T, c.recompute);

  // --- start-up block ------------------------------------------------------------------
  const uint64_t tokens_per_step = static_cast<uint64_t>(world) * c.grad_accum * c.micro_batch * T;
  if (leader) {
    std::string block;
    block += fmt::format("mics train: {} ({})\n", c.model, mc.describe());
    block += fmt::format("  strategy {} | partition size p={} | replicas r={} | {}\n", c.strategy, p, engine.replicas(),
                         topology.describe());
    block += fmt::format("  partition groups: contiguous blocks of {} ranks; replication groups: ranks {} apart\n", p, p);
    block += fmt::format("  rails: intra-node {} | inter-node {}\n",
                         per_node > 1 ? rt->transport().provider(fabric::Rail::kIntra) : std::string("(unused: one rank per node)"),
                         topology.num_nodes > 1 ? rt->transport().provider(fabric::Rail::kInter) : std::string("(unused: one node)"));
    block += fmt::format("  batch: {} ranks x {} micro-steps x {} sequences x {} tokens = {} tokens per step; {} steps\n",
                         world, c.grad_accum, c.micro_batch, T, thousands(static_cast<double>(tokens_per_step)), c.steps);
    block += fmt::format("  optimizer: AdamW lr {:.2e} (warm-up {}, cosine to {:.2e}), weight decay {}, clip {}\n", c.lr,
                         c.warmup < 0 ? std::max(1, c.steps / 20) : c.warmup, c.lr * c.min_lr_ratio, c.weight_decay, c.clip);
    block += fmt::format("  data: {} ({} sequences; eval: {})\n", data_plan.origin,
                         thousands(static_cast<double>(train_data.num_sequences())),
                         val_data ? fmt::format("{} sequences", val_data->num_sequences()) : std::string("none"));
    if (data_plan.entropy_floor >= 0) block += fmt::format("  entropy floor of the data: {:.4f} nats/token\n", data_plan.entropy_floor);
    block += fmt::format("  memory per rank: model states {} + gathered {} + gradients {} + activations {}{} = {} (budget {})\n",
                         mib(mp.model_states), mib(mp.gathered), mib(mp.grad_buffers), mib(mp.activations),
                         c.recompute ? " (recompute)" : "", mib(mp.total()), gib(budget));
    block += fmt::format("  compute threads per rank: {}\n", threads);
    std::fputs(block.c_str(), stdout);
    std::fflush(stdout);
  }

  // --- outputs (only now: bad input has been ruled out) ------------------------------------
  std::unique_ptr<MetricsWriter> metrics;
  std::string metrics_path = c.metrics;
  if (metrics_path.empty() && !c.out.empty()) metrics_path = c.out + "/metrics.jsonl";
  if (leader) {
    if (!c.out.empty()) {
      std::error_code ec;
      fs::create_directories(c.out, ec);
      if (ec)
        throw Error(ErrorKind::kIo, fmt::format("cannot create --out {}: {}", c.out, ec.message()),
                    {.layer = "train", .where = "mics train", .hint = "choose a writable directory"});
    }
    if (!metrics_path.empty()) metrics = std::make_unique<MetricsWriter>(metrics_path);
  }

  // --- training ------------------------------------------------------------------------------
  StopSignal stop;
  const LrSchedule schedule{c.lr, c.warmup < 0 ? std::max(1, c.steps / 20) : c.warmup, c.steps, c.min_lr_ratio};
  const io::Sampler sampler(train_data.num_sequences(), c.seed);
  io::Prefetcher prefetcher(train_data, sampler, rank, world, c.grad_accum, c.micro_batch, static_cast<uint64_t>(start_step));
  Checkpointer ckpt(engine, c, gpt, plain_layout(engine, gpt, rank, world), T, start_step, loaded_from);
  model::GptPass pass(gpt, c.micro_batch, T, c.recompute);
  std::vector<float> grad0(gpt.unit_numel(0)), grad_block(gpt.num_units() > 1 ? gpt.unit_numel(1) : 0);
  StepPrinter printer(leader, c.steps, c.log_every);

  comm::Traffic excluded;  // evaluation traffic, left out of the per-step figures
  auto subtract_traffic = [](comm::Traffic& total, const comm::Traffic& after, const comm::Traffic& before) {
    for (int i = 0; i < fabric::kNumRails; ++i) {
      total.bytes_sent[i] += after.bytes_sent[i] - before.bytes_sent[i];
      total.msgs_sent[i] += after.msgs_sent[i] - before.msgs_sent[i];
    }
  };
  // The first step of a run (fresh or resumed) pays for first touches: left out of tokens/s.
  RunTally tally(tokens_per_step, c.steps - start_step > 1 ? start_step + 1 : start_step);
  double data_wait_total = 0;
  double eval_loss = NAN;
  bool stopped = false;
  for (int step = start_step; step < c.steps; ++step) {
    const float lr = schedule.at(step);
    engine.set_lr(lr);
    const auto t0 = Clock::now();
    observer.step_begin(step + 1);
    obs::ScopedSpan step_span(&observer, "step", "step", step + 1);
    const double wait_before = prefetcher.wait_seconds();
    double loss_sum = 0, exposed = 0;
    shard::StepReport report;
    for (int m = 0; m < c.grad_accum; ++m) {
      io::MicroBatch mb = [&] {
        obs::ScopedSpan span(&observer, "data", "data wait");
        return prefetcher.next();
      }();
      pass.set_tokens(mb.inputs.data(), mb.targets.data());
      loss_sum += train_micro_step(engine, pass, mc.layers, grad0, grad_block, &observer);
      report = engine.step();
      exposed += report.exposed_comm_s;
    }
    // The mean loss over the global batch, an agreed stop (a signal on any rank stops all
    // after this step) and the straggler data (obs/straggler.hpp): one small control all-reduce.
    float control[2] = {static_cast<float>(loss_sum / c.grad_accum), stop.requested() ? 1.0f : 0.0f};
    const obs::StragglerResult straggler = exchange_control(engine, observer, control);
    const double step_s = seconds_since(t0);
    const double loss = static_cast<double>(control[0]) / world;
    StepRecord rec = tally.add(step, loss, lr, report.grad_norm, report.skipped, step_s, exposed);
    const double data_wait = prefetcher.wait_seconds() - wait_before;
    data_wait_total += data_wait;
    rec.data_wait_ms = data_wait * 1e3;
    fill_observed(rec, straggler, observer, stragglers);
    if (val_data && c.eval_every > 0 && (step + 1) % c.eval_every == 0 && step + 1 < c.steps) {
      const comm::Traffic before = engine.traffic();
      const EvalResult ev = evaluate(engine, gpt, *val_data, rank, world, c.micro_batch, c.eval_batches);
      subtract_traffic(excluded, engine.traffic(), before);
      rec.eval_loss = ev.loss;
      eval_loss = ev.loss;
    }
    {
      // The step's checkpoint stall (an async save's snapshot, or a blocking save), before the
      // record is written so that it carries it.
      const auto ckpt_t0 = Clock::now();
      obs::ScopedSpan span(&observer, "checkpoint", "checkpoint");
      ckpt.after_step(step + 1);
      rec.checkpoint_ms = seconds_since(ckpt_t0) * 1e3;
    }
    if (report_step(printer, metrics.get(), rec, control[1] > 0)) {
      stopped = true;
      break;
    }
  }
  printer.finish();
  const int steps_done = tally.steps();
  ckpt.finish(start_step + steps_done);

  // --- final evaluation, samples, summary -----------------------------------------------------
  if (val_data && !stopped) {
    const comm::Traffic before = engine.traffic();
    eval_loss = evaluate(engine, gpt, *val_data, rank, world, c.micro_batch, c.eval_batches).loss;
    subtract_traffic(excluded, engine.traffic(), before);
  }
  if (c.samples > 0 && !stopped) {
    const comm::Traffic before = engine.traffic();
    const std::vector<int32_t> prompt = sample_prompt(val_data ? *val_data : train_data, T);
    const auto seqs = sample(engine, gpt, prompt, c.samples, c.sample_tokens, c.seed);
    subtract_traffic(excluded, engine.traffic(), before);
    if (leader) std::fputs(format_samples(prompt, seqs, mc.vocab, val_data != nullptr).c_str(), stdout);
  }

  comm::Traffic trained = engine.traffic();
  for (int i = 0; i < fabric::kNumRails; ++i) trained.bytes_sent[i] -= excluded.bytes_sent[i];
  const comm::Traffic expected = engine.expected_traffic(steps_done);
  // The largest peak RSS over the ranks; whether every rank's traffic matched the model.
  float rss_max = static_cast<float>(static_cast<double>(peak_rss_bytes()) / (1 << 20));  // MiB
  engine.control_all_reduce(&rss_max, 1, ReduceOp::kMax);
  const bool traffic_matches = trained.bytes_sent[kIntraRail] == expected.bytes_sent[kIntraRail] &&
                               trained.bytes_sent[kInterRail] == expected.bytes_sent[kInterRail];
  float mismatch = traffic_matches ? 0.0f : 1.0f;
  engine.control_all_reduce(&mismatch, 1, ReduceOp::kMax);

  Summary sum;
  sum.strategy = c.strategy;
  sum.model = c.model;
  sum.world_size = world;
  sum.nodes = topology.num_nodes;
  sum.partition_size = p;
  sum.grad_accum = c.grad_accum;
  sum.micro_batch = c.micro_batch;
  sum.seq_len = T;
  tally.fill(sum);
  sum.stopped_early = stopped;
  sum.eval_loss = eval_loss;
  sum.entropy_floor = data_plan.entropy_floor;
  sum.data_wait_ms_per_step = tally.per_step(data_wait_total * 1e3);
  // Rank 0's bytes per step, as the traffic formulas in shard/engine.hpp count them per rank.
  sum.intra_node_bytes_per_step = steps_done ? static_cast<double>(trained.bytes_sent[kIntraRail]) / steps_done : 0;
  sum.inter_node_bytes_per_step = steps_done ? static_cast<double>(trained.bytes_sent[kInterRail]) / steps_done : 0;
  sum.traffic_matches_model = mismatch == 0.0f;
  sum.model_state_bytes_per_rank = engine.memory().model_state_bytes;
  sum.peak_rss_bytes = static_cast<uint64_t>(static_cast<double>(rss_max) * (1 << 20));
  sum.recompute = c.recompute;
  sum.activation_bytes = mp.activations;
  sum.params = mc.num_params();
  sum.flops_per_token = mc.flops_per_token(T);
  sum.host_cores = usable_cores();
  sum.ranks_on_host = ranks_on_host();
  sum.compute_threads = threads;
  sum.observability_json = observed_summary(engine, observer, rt->transport(), stragglers);
  if (!c.trace.empty()) {
    // The fabric counters now: the trace's collectives (when none were dropped) add up to them.
    const auto base = observer.fabric_baseline();
    const nlohmann::json other = {{"command", "mics train"}, {"model", c.model}, {"strategy", c.strategy},
                                  {"fabric_rail_bytes", {rt->transport().counters(fabric::Rail::kIntra).bytes_sent - base[0],
                                                         rt->transport().counters(fabric::Rail::kInter).bytes_sent - base[1]}}};
    observer.write_trace(obs::trace_path_for_rank(c.trace, rank), other.dump());
  }
  if (leader) {
    std::fputs(format_summary(sum).c_str(), stdout);
    std::fflush(stdout);
    if (metrics) metrics->summary(sum);
  }
  rt->finish();
  return 0;
}

}  // namespace mics::train
