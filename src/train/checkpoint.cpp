#include "train/checkpoint.hpp"

#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/log.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "model/gpt_hf.hpp"

namespace mics::train {

namespace fs = std::filesystem;

namespace {

const char* kKinds[3] = {"param", "exp_avg", "exp_avg_sq"};

int warmup_steps(const TrainConfig& c) { return c.warmup < 0 ? std::max(1, c.steps / 20) : c.warmup; }

nlohmann::json model_record(const TrainConfig& c, const model::Gpt& gpt) {
  const model::GptConfig& g = gpt.config();
  nlohmann::json units = nlohmann::json::array();
  for (int u = 0; u < gpt.num_units(); ++u) units.push_back({{"name", gpt.unit_name(u)}, {"numel", gpt.unit_numel(u)}});
  return {{"name", c.model}, {"layers", g.layers}, {"heads", g.heads}, {"channels", g.channels},
          {"vocab", g.vocab}, {"max_seq", g.max_seq}, {"units", units}};
}

[[noreturn]] void train_error(ErrorKind kind, std::string message, std::string hint) {
  throw Error(kind, std::move(message), {.layer = "train", .where = "checkpoint", .hint = std::move(hint)});
}

std::string tensor_name(const model::Gpt& gpt, int logical_unit, int kind) {
  return fmt::format("{}.{}", gpt.unit_name(logical_unit), kKinds[kind]);
}

// The logical pieces of engine elements [offset, offset + count) of `unit` (the layout's pieces
// of the unit cut to the range: a partial first row, the whole rows, a partial last row).
void place(const StateLayout& layout, int unit, size_t offset, size_t count, std::vector<model::UnitPiece>& out) {
  out.clear();
  const size_t end = offset + count;
  for (const model::UnitPiece& p : layout.pieces(unit)) {
    const size_t lo = std::max(offset, p.local), hi = std::min(end, p.local + p.rows * p.run);
    if (lo >= hi) continue;
    auto emit = [&](size_t local, size_t row, size_t col, size_t rows, size_t run) {
      out.push_back({local, p.unit, p.offset + row * p.stride + col, rows, run, rows > 1 ? p.stride : run});
    };
    size_t row = (lo - p.local) / p.run, at = lo;
    const size_t col = (lo - p.local) % p.run;
    if (col != 0 || hi - at < p.run) {
      const size_t n = std::min(p.run - col, hi - at);
      emit(at, row, col, 1, n);
      at += n;
      ++row;
    }
    if (const size_t full = (hi - at) / p.run; full > 0) {
      emit(at, row, 0, full, p.run);
      at += full * p.run;
      row += full;
    }
    if (at < hi) emit(at, row, 0, 1, hi - at);
  }
}

// The part of a checkpoint range that copy `which` of `copies` writes: block `which` of the
// range cut in `copies` (the first count % copies blocks one element longer).
std::pair<size_t, size_t> share_of(std::pair<int, int> copies, size_t offset, size_t count) {
  const size_t n = static_cast<size_t>(copies.first), j = static_cast<size_t>(copies.second);
  const size_t base = count / n, extra = count % n;
  return {offset + j * base + std::min(j, extra), base + (j < extra ? 1 : 0)};
}

// Fills every range the state holds from full logical units (`full(unit)`: the unit's
// elements, valid until the next call) and zeroes the moments.
void load_from_units(shard::CheckpointState& state, const StateLayout& layout,
                     const std::function<const float*(int)>& full) {
  std::vector<model::UnitPiece> pieces;
  state.load_state([&](int unit, int which, size_t offset, size_t count, float* out) {
    if (which != 0) {
      std::fill(out, out + count, 0.0f);
      return;
    }
    place(layout, unit, offset, count, pieces);
    for (const model::UnitPiece& p : pieces) {
      const float* src = full(p.unit);
      for (size_t i = 0; i < p.rows; ++i)
        std::copy(src + p.offset + i * p.stride, src + p.offset + i * p.stride + p.run, out + (p.local - offset) + i * p.run);
    }
  });
}

}  // namespace

StateLayout plain_layout(shard::CheckpointState& state, const model::Gpt& gpt, int rank, int world) {
  StateLayout l;
  l.rank = rank;
  l.world = world;
  l.data_ranks = world;
  l.pieces = [&gpt](int unit) {
    const size_t n = gpt.unit_numel(unit);
    return std::vector<model::UnitPiece>{{0, unit, 0, 1, n, n}};
  };
  l.copies = [](int) { return std::pair<int, int>{1, 0}; };
  l.all_reduce = [&state](float* v, size_t n, ReduceOp op) { state.control_all_reduce(v, n, op); };
  return l;
}

struct Checkpointer::Impl {
  shard::CheckpointState& state;
  const TrainConfig& c;
  const model::Gpt& gpt;
  StateLayout layout;
  int rank, world, seq_len;
  bool leader;
  int last_saved = -1;
  std::string skip_dir;  // the checkpoint we loaded from, never overwritten
  std::vector<float> buffer;  // the snapshot, allocated (and touched) up front
  // The save in flight.
  bool pending = false;
  int pending_step = 0;
  std::string pending_dir;
  std::thread writer;
  std::atomic<bool> writer_done{false};
  std::string writer_error;
  int writer_errno = 0;  // the system error of writer_error, 0 when none
  bool saving_final = false;
  io::WriteStats stats;
  Clock::time_point started;

  Impl(shard::CheckpointState& e, const TrainConfig& config, const model::Gpt& g, StateLayout l, int T)
      : state(e),
        c(config),
        gpt(g),
        layout(std::move(l)),
        rank(layout.rank),
        world(layout.world),
        seq_len(T),
        leader(rank == 0) {}

  // The control all-reduce over every rank of the job.
  void all_reduce(float* v, size_t n, ReduceOp op) { layout.all_reduce(v, n, op); }

  nlohmann::json training_record(int step) const {
    const shard::OptimizerCounters oc = state.optimizer_counters();
    const uint64_t G = static_cast<uint64_t>(layout.data_ranks) * static_cast<uint64_t>(c.grad_accum) * static_cast<uint64_t>(c.micro_batch);
    nlohmann::json t = {
        {"step", step},
        {"sampler_position", static_cast<uint64_t>(step) * G},
        {"global_batch_sequences", G},
        {"seq_len", seq_len},
        {"adam_steps", oc.steps},
        {"consecutive_skipped_steps", oc.consecutive_skips},
        {"seed", c.seed},
        {"rng",
         {{"sampler", "a permutation per epoch drawn from the seed; position = step * global batch"},
          {"init", "deterministic in (seed, unit, index)"}}},
        {"schedule",
         {{"peak_lr", c.lr}, {"warmup", warmup_steps(c)}, {"steps", c.steps}, {"min_lr_ratio", c.min_lr_ratio}}},
        {"optimizer",
         {{"name", "adamw"},
          {"beta1", 0.9},
          {"beta2", 0.95},
          {"eps", 1e-8},
          {"weight_decay", c.weight_decay},
          {"clip", c.clip}}},
        {"world_size", world},
        {"strategy", c.strategy},
        {"partition_size", state.partition_size()},
        {"grad_accum", c.grad_accum},
        {"micro_batch", c.micro_batch},
        {"data_ranks", layout.data_ranks},
        {"layout", "logical: the one-process model's units, whatever the mesh"}};
    if (!layout.mesh.is_null()) t["mesh"] = layout.mesh;
    return t;
  }

  // This rank's part of a checkpoint range (all of it unless other ranks hold the same copy).
  std::pair<size_t, size_t> share(const shard::StateRange& r) const { return share_of(layout.copies(r.unit), r.offset, r.count); }

  size_t snapshot_elements() const {
    size_t n = 0;
    for (const auto& r : state.checkpoint_ranges()) n += 3 * share(r).second;
    return n;
  }

  // What the training does after a save that failed (for the log lines).
  const char* consequence() const {
    return saving_final ? "this was the final save: the run stops with an error"
                        : "the previous checkpoint is untouched and training continues without this one";
  }

  enum class Prepared { kReady, kFailed, kKept };

  // Collective: rank 0 makes the step directory; all agree on the outcome. A directory that
  // already holds a committed checkpoint of this step (a resume from an older checkpoint of
  // the same run) is kept as it is, never overwritten: a committed checkpoint is only ever
  // deleted by --keep rotation. One without a manifest is leftovers of an unfinished save and
  // is replaced.
  Prepared prepare_dir(const std::string& dir, int step) {
    float outcome = 0;  // 0 ready, 1 failed, 2 kept (only rank 0 contributes)
    if (leader) {
      try {
        std::error_code ec;
        const bool exists = fs::exists(fs::symlink_status(dir, ec));
        if (exists && fs::exists(fs::path(dir) / io::kManifestName, ec)) {
          std::string problem;
          try {
            const io::CheckpointReader existing(dir);
            if (existing.step() != static_cast<uint64_t>(step))
              problem = fmt::format("its manifest is of step {}", existing.step());
          } catch (const Error& e) {
            problem = e.message();
          }
          if (!problem.empty())
            throw Error(ErrorKind::kIo,
                        fmt::format("{} already holds a committed checkpoint that does not open ({}); it is left as it "
                                    "is, not overwritten",
                                    dir, problem),
                        {.layer = "train", .where = "checkpoint", .hint = "inspect it with mics ckpt verify; move it away to save there"});
          log::info("checkpoint step {}: {} already holds a committed checkpoint of this step (from before the resume); "
                    "kept it as it is, not overwritten",
                    step, dir);
          outcome = 2;
        } else {
          if (exists) {
            if (!io::remove_checkpoint(dir))
              throw Error(ErrorKind::kIo, fmt::format("cannot remove {}, the leftovers of an unfinished save", dir),
                          {.layer = "train", .where = "checkpoint", .hint = "check the permissions of --out"});
            log::info("checkpoint step {}: replacing {}, the leftovers of an unfinished save (no {})", step, dir,
                      io::kManifestName);
          }
          if (::mkdir(dir.c_str(), 0755) != 0) {
            const int err = errno;
            throw Error(ErrorKind::kIo, fmt::format("cannot create checkpoint directory {}: {}", dir, errno_text(err)),
                        {.layer = "train", .where = "checkpoint",
                         .hint = err == ENOENT ? fmt::format("the --out directory {} vanished: recreate it or point --out elsewhere", c.out)
                                               : "check free space and permissions of --out"});
          }
        }
      } catch (const Error& e) {
        log::error("checkpoint step {} not saved: {}; {}", step, e.what(), consequence());
        outcome = 1;
      }
    }
    all_reduce(&outcome, 1, ReduceOp::kSum);
    return outcome == 0 ? Prepared::kReady : outcome == 1 ? Prepared::kFailed : Prepared::kKept;
  }

  void write_body() {
    try {
      std::vector<io::WriteChunk> chunks;
      std::vector<model::UnitPiece> pieces;
      size_t at = 0;
      for (const Share& sh : shares) {
        place(layout, sh.unit, sh.offset, sh.count, pieces);
        for (int k = 0; k < 3; ++k) {
          const float* base = buffer.data() + at;
          for (const model::UnitPiece& p : pieces)
            chunks.push_back({tensor_name(gpt, p.unit, k), gpt.unit_numel(p.unit), p.offset, p.rows * p.run,
                              base + (p.local - sh.offset), p.rows > 1 ? p.run : 0, p.rows > 1 ? p.stride : 0});
          at += sh.count;
        }
      }
      stats = io::write_shard_file(pending_dir, io::rank_file_name(rank), chunks);
    } catch (const io::SystemError& e) {
      writer_error = e.what();
      writer_errno = e.sys_errno();
    } catch (const std::exception& e) {
      writer_error = e.what();
    }
    writer_done = true;
  }
  struct Share {
    int unit;
    size_t offset, count;
  };
  std::vector<Share> shares;  // what the snapshot holds: this rank's parts of its ranges

  void save(int step, bool sync, bool final_save) {
    if (pending) {
      const auto t0 = Clock::now();
      const int was = pending_step;
      complete(true);
      if (leader)
        log::warn("checkpoint step {} was still being written when step {} was due: waited {:.3f} s for it", was, step,
                  seconds_since(t0));
    }
    const std::string dir = c.out + "/" + io::step_dir_name(static_cast<uint64_t>(step));
    last_saved = step;
    last_failed = false;
    saving_final = final_save;
    if (std::error_code ec; !skip_dir.empty() && fs::equivalent(dir, skip_dir, ec)) return;
    pending_step = step;
    switch (prepare_dir(dir, step)) {
      case Prepared::kReady: break;
      case Prepared::kKept: return;
      case Prepared::kFailed: last_failed = true; return;
    }
    const auto t0 = Clock::now();
    started = t0;
    const std::vector<shard::StateRange> ranges = state.checkpoint_ranges();
    shares.clear();
    size_t need = 0;
    for (const auto& r : ranges) {
      const auto [offset, count] = share(r);
      shares.push_back({r.unit, offset, count});
      need += 3 * count;
    }
    if (buffer.size() < need) buffer.resize(need);
    size_t at = 0;
    for (size_t i = 0; i < ranges.size(); ++i) {
      for (int k = 0; k < 3; ++k) {
        state.copy_state(ranges[i], k, shares[i].offset, shares[i].count, buffer.data() + at);
        at += shares[i].count;
      }
    }
    training = training_record(step);
    pending = true;
    pending_dir = dir;
    writer_done = false;
    writer_error.clear();
    writer_errno = 0;
    const double pause = seconds_since(t0);
    if (sync) {
      write_body();
      complete(true);
      if (leader) log::info("checkpoint step {}: blocking save took {:.3f} s", step, seconds_since(t0));
    } else {
      writer = std::thread([this] { write_body(); });
      if (leader) log::info("checkpoint step {}: snapshot {:.3f} s (the step's pause); writing in the background", step, pause);
    }
  }
  nlohmann::json training;

  // Agrees whether the save in flight finished everywhere; commits it when it did. With
  // `wait`, blocks until it finished. Returns false while still in flight.
  bool complete(bool wait) {
    if (!pending) return true;
    if (wait && writer.joinable()) writer.join();
    float flags[3] = {writer_done ? 1.0f : 0.0f, writer_done && !writer_error.empty() ? 1.0f : 0.0f, 0};
    all_reduce(flags, 2, ReduceOp::kSum);
    if (flags[0] < static_cast<float>(world)) return false;
    if (writer.joinable()) writer.join();
    pending = false;
    const int step = pending_step;
    if (flags[1] > 0) {
      if (!writer_error.empty()) log::error("checkpoint step {}: this rank's write failed: {}", step, writer_error);
      // Which ranks failed and their system error (-1: not a system error), for rank 0's report.
      std::vector<float> reasons(static_cast<size_t>(world), 0.0f);
      if (!writer_error.empty()) reasons[static_cast<size_t>(rank)] = writer_errno > 0 ? static_cast<float>(writer_errno) : -1.0f;
      all_reduce(reasons.data(), reasons.size(), ReduceOp::kSum);
      if (leader) {
        std::string who;
        int listed = 0;
        for (int r = 0; r < world; ++r) {
          const float v = reasons[static_cast<size_t>(r)];
          if (v == 0) continue;
          if (++listed > 16) continue;
          who += fmt::format("{}{} ({})", who.empty() ? "" : ", ", r,
                             v > 0 ? errno_text(static_cast<int>(v)) : std::string("see its log line"));
        }
        if (listed > 16) who += fmt::format(" and {} more", listed - 16);
        log::error("checkpoint step {} failed on rank(s) {}; see their log lines. {} not committed and removed; {}", step,
                   who, pending_dir, consequence());
        io::remove_checkpoint(pending_dir);
      }
      last_failed = true;
      return true;
    }
    float commit_failed = 0;
    float seconds = static_cast<float>(stats.seconds);
    all_reduce(&seconds, 1, ReduceOp::kMax);
    if (leader) {
      try {
        std::vector<std::string> files;
        for (int r = 0; r < world; ++r) files.push_back(io::rank_file_name(r));
        io::commit_manifest(pending_dir, files, static_cast<uint64_t>(step), training, model_record(c, gpt));
      } catch (const Error& e) {
        log::error("checkpoint step {}: commit failed on rank 0: {}; {}", step, e.what(), consequence());
        io::remove_checkpoint(pending_dir);
        commit_failed = 1;
      }
    }
    all_reduce(&commit_failed, 1, ReduceOp::kSum);
    if (commit_failed > 0) {
      last_failed = true;
      return true;
    }
    last_failed = false;
    if (leader) {
      uint64_t bytes = 0;
      for (int u = 0; u < gpt.num_units(); ++u) bytes += 12 * gpt.unit_numel(u);
      log::info("checkpoint step {} committed: {} ({:.1f} MiB, writers' time {:.3f} s, {:.1f} MB/s)", step, pending_dir,
                static_cast<double>(bytes) / (1 << 20), seconds, static_cast<double>(bytes) / 1e6 / std::max(1e-9f, seconds));
      retain();
    }
    return true;
  }
  bool last_failed = false;

  // Rank 0, after a commit: keeps the newest --keep committed checkpoints; removes older ones
  // and unfinished saves older than the newest commit.
  void retain() {
    int committed = 0;
    for (const io::StepDir& d : io::list_checkpoints(c.out)) {
      if (d.committed) {
        if (++committed <= c.keep) continue;
      } else if (committed == 0) {
        continue;  // newer than every commit: not ours to judge
      }
      if (std::error_code ec; !skip_dir.empty() && fs::equivalent(d.path, skip_dir, ec)) continue;
      if (!io::remove_checkpoint(d.path)) log::warn("could not remove old checkpoint {}", d.path);
    }
  }
};

Checkpointer::Checkpointer(shard::CheckpointState& state, const TrainConfig& config, const model::Gpt& gpt,
                           StateLayout layout, int seq_len, int start_step, std::string loaded_from)
    : impl_(std::make_unique<Impl>(state, config, gpt, std::move(layout), seq_len)) {
  Impl& s = *impl_;
  if (!enabled()) return;
  s.skip_dir = std::move(loaded_from);
  if (config.resume == "auto" || (!s.skip_dir.empty() && fs::path(s.skip_dir).parent_path() == fs::path(config.out)))
    s.last_saved = start_step;
  s.buffer.assign(s.snapshot_elements(), 0.0f);  // touched now, not during the first save
}

Checkpointer::~Checkpointer() {
  if (impl_->writer.joinable()) impl_->writer.join();
}

bool Checkpointer::enabled() const { return impl_->c.ckpt_every > 0; }

void Checkpointer::after_step(int step) {
  if (!enabled()) return;
  Impl& s = *impl_;
  if (s.pending) s.complete(false);
  if (step % s.c.ckpt_every == 0 && step < s.c.steps) s.save(step, s.c.ckpt_sync, false);
}

void Checkpointer::finish(int step) {
  if (!enabled()) return;
  Impl& s = *impl_;
  if (s.last_saved != step) {
    s.save(step, true, true);
    if (s.last_failed)
      train_error(ErrorKind::kIo, fmt::format("the final checkpoint (step {}) could not be saved", step),
                  "see the error above; the previous checkpoint is untouched");
  }
  s.complete(true);
}

// --- loading ------------------------------------------------------------------------------

namespace {

// Throws (on every rank alike) when the checkpoint cannot continue this run.
void check_compatible(const io::CheckpointReader& r, const TrainConfig& c, const model::Gpt& gpt, int data_ranks, int seq_len) {
  const nlohmann::json& m = r.manifest().at("model");
  const model::GptConfig& g = gpt.config();
  if (m.at("layers") != g.layers || m.at("heads") != g.heads || m.at("channels") != g.channels || m.at("vocab") != g.vocab ||
      m.at("max_seq") != g.max_seq)
    train_error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint {} holds model {} (L{} H{} C{} V{} T{}), this run trains {} ({})", r.dir(),
                            m.value("name", "?"), m.at("layers").get<int>(), m.at("heads").get<int>(),
                            m.at("channels").get<int>(), m.at("vocab").get<int>(), m.at("max_seq").get<int>(), c.model,
                            g.describe()),
                "give the --model the checkpoint was trained with");
  const nlohmann::json& t = r.manifest().at("training");
  const uint64_t G = static_cast<uint64_t>(data_ranks) * static_cast<uint64_t>(c.grad_accum) * static_cast<uint64_t>(c.micro_batch);
  if (t.at("global_batch_sequences") != G || t.at("seq_len") != seq_len)
    train_error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint {} was trained with a global batch of {} sequences of {} tokens; this run has {} "
                            "{}ranks x {} micro-steps x {} sequences = {} of {}",
                            r.dir(), t.at("global_batch_sequences").get<uint64_t>(), t.at("seq_len").get<int>(), data_ranks,
                            c.tensor_parallel > 1 || c.pipeline_parallel > 1 ? "data " : "", c.grad_accum, c.micro_batch, G,
                            seq_len),
                "keep ranks x --grad-accum x --micro-batch and --seq-len equal to the checkpoint's (change --grad-accum "
                "when the world size changes)");
  if (t.at("step").get<int>() > c.steps)
    train_error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint {} is at step {}, past --steps {}", r.dir(), t.at("step").get<int>(), c.steps),
                "raise --steps");
}

void load_fresh(shard::CheckpointState& state, const TrainConfig& c, const model::Gpt& gpt, const StateLayout& layout) {
  std::vector<float> full;
  int cached = -1;
  load_from_units(state, layout, [&](int unit) {
    if (cached != unit) {
      full.assign(gpt.unit_numel(unit), 0.0f);
      gpt.init_unit(unit, c.seed, full.data());
      cached = unit;
    }
    return full.data();
  });
  state.set_optimizer_counters({});
}

int init_from_hf(shard::CheckpointState& state, const TrainConfig& c, const model::Gpt& gpt, const StateLayout& layout,
                 std::string* source) {
  const std::string dir = c.init_from;
  std::ifstream in(dir + "/config.json");
  if (!in)
    train_error(ErrorKind::kInvalidArgument, fmt::format("--init-from {}: no config.json there", dir),
                "give a Hugging Face GPT-2 directory (config.json + model.safetensors), e.g. from mics ckpt export");
  const model::GptConfig hf = model::gpt_config_from_hf(nlohmann::json::parse(in));
  const model::GptConfig& g = gpt.config();
  if (hf.layers != g.layers || hf.heads != g.heads || hf.channels != g.channels || hf.vocab != g.vocab || hf.max_seq != g.max_seq)
    train_error(ErrorKind::kInvalidArgument,
                fmt::format("--init-from {} is L{}H{}C{}V{}T{}, --model {} is {}", dir, hf.layers, hf.heads, hf.channels,
                            hf.vocab, hf.max_seq, c.model, g.describe()),
                fmt::format("use --model L{}H{}C{}V{}T{}", hf.layers, hf.heads, hf.channels, hf.vocab, hf.max_seq));
  const auto tensors = io::read_safetensors(dir + "/model.safetensors");
  std::vector<std::vector<float>> units(static_cast<size_t>(gpt.num_units()));
  for (int u = 0; u < gpt.num_units(); ++u) units[static_cast<size_t>(u)].assign(gpt.unit_numel(u), 0.0f);
  for (const model::HfTensor& t : model::gpt2_hf_tensors(g)) {
    auto it = tensors.find(t.name);
    if (it == tensors.end() && t.name.rfind("transformer.", 0) == 0) it = tensors.find(t.name.substr(12));
    if (it == tensors.end())
      train_error(ErrorKind::kInvalidArgument, fmt::format("--init-from {}: model.safetensors has no {}", dir, t.name),
                  "export a complete GPT-2 model");
    if (it->second.shape != t.hf_shape() || it->second.data.size() != t.rows * t.cols)
      train_error(ErrorKind::kInvalidArgument, fmt::format("--init-from {}: {} has the wrong shape", dir, t.name),
                  "the tensor layouts must be GPT-2's (Conv1D weights [in, out])");
    model::from_hf(t, it->second.data.data(), units[static_cast<size_t>(t.unit)].data());
  }
  load_from_units(state, layout, [&](int unit) { return units[static_cast<size_t>(unit)].data(); });
  state.set_optimizer_counters({});
  *source = dir;
  return 0;
}

}  // namespace

int load_initial_state(shard::CheckpointState& state, const TrainConfig& c, const model::Gpt& gpt,
                       const StateLayout& layout, int seq_len, std::string* source) {
  const int rank = layout.rank, world = layout.world;
  source->clear();
  if (!c.init_from.empty()) return init_from_hf(state, c, gpt, layout, source);
  if (c.resume.empty() || c.resume == "none") return 0;
  const bool automatic = c.resume == "auto";
  std::vector<io::StepDir> candidates;
  if (automatic) {
    candidates = io::list_checkpoints(c.out);
  } else if (fs::exists(fs::path(c.resume) / io::kManifestName)) {
    candidates.push_back({0, c.resume, true});
  } else if (fs::is_directory(c.resume) && !io::list_checkpoints(c.resume).empty()) {
    candidates = io::list_checkpoints(c.resume);
  } else {
    candidates.push_back({0, c.resume, false});
  }
  bool touched = false;
  std::string last_problem;
  for (const io::StepDir& d : candidates) {
    if (!d.committed) {
      last_problem = fmt::format("{} has no {} (an unfinished or failed save)", d.path, io::kManifestName);
      if (rank == 0) log::warn("resume: skipping {}", last_problem);
      continue;
    }
    std::string problem;
    std::unique_ptr<io::CheckpointReader> reader;
    try {
      reader = std::make_unique<io::CheckpointReader>(d.path);
    } catch (const Error& e) {
      problem = e.message();
    }
    if (reader) check_compatible(*reader, c, gpt, layout.data_ranks, seq_len);  // a mismatch is an error, not a fallback
    if (reader) {
      touched = true;
      try {
        std::vector<model::UnitPiece> pieces;
        std::vector<io::ReadRun> runs;
        state.load_state([&](int unit, int which, size_t offset, size_t count, float* out) {
          place(layout, unit, offset, count, pieces);
          // An engine unit's pieces lie in one logical unit (a block's slices, or the embeddings).
          for (size_t i = 0; i < pieces.size();) {
            const int logical = pieces[i].unit;
            runs.clear();
            for (; i < pieces.size() && pieces[i].unit == logical; ++i) {
              const model::UnitPiece& p = pieces[i];
              for (size_t row = 0; row < p.rows; ++row)
                runs.push_back({p.offset + row * p.stride, p.run, out + (p.local - offset) + row * p.run});
            }
            reader->read_runs(tensor_name(gpt, logical, which), runs);
          }
        });
      } catch (const Error& e) {
        problem = e.message();
      }
    }
    float failed = problem.empty() ? 0.0f : 1.0f;
    layout.all_reduce(&failed, 1, ReduceOp::kSum);
    if (failed == 0) {
      const nlohmann::json& t = reader->manifest().at("training");
      state.set_optimizer_counters({t.at("adam_steps").get<int64_t>(), t.at("consecutive_skipped_steps").get<int>()});
      *source = d.path;
      const int step = t.at("step");
      if (rank == 0) {
        auto mesh_text = [](const nlohmann::json& m) {
          return m.is_null() ? std::string()
                             : fmt::format(" in a mesh r{} p{} s{} t{}", m.at("r").get<int>(), m.at("p").get<int>(),
                                           m.at("s").get<int>(), m.at("t").get<int>());
        };
        log::info("resumed from {} (step {}, written by {} ranks with {} p={}{}; this run: {} ranks{})", d.path, step,
                  t.at("world_size").get<int>(), t.at("strategy").get<std::string>(), t.at("partition_size").get<int>(),
                  mesh_text(t.value("mesh", nlohmann::json())), world, mesh_text(layout.mesh));
        if (t.at("schedule").at("steps") != c.steps)
          log::warn("resume: the checkpoint's schedule ran over {} steps, this run's over {}: the learning rate curve "
                    "changes from here on",
                    t.at("schedule").at("steps").get<int>(), c.steps);
      }
      return step;
    }
    last_problem = problem.empty() ? fmt::format("{}: a checkpoint file failed to verify on another rank", d.path) : problem;
    if (!problem.empty()) log::warn("resume: {} is unusable: {}", d.path, problem);
    if (rank == 0) log::warn("resume: falling back past {} (unusable on {} rank(s))", d.path, static_cast<int>(failed));
  }
  if (!automatic)
    train_error(ErrorKind::kInvalidArgument,
                fmt::format("--resume {}: no usable checkpoint{}", c.resume, last_problem.empty() ? "" : ": " + last_problem),
                "give a committed step-XXXXXXXX directory, --resume auto, or --resume none");
  if (touched) load_fresh(state, c, gpt, layout);
  if (rank == 0) log::info("resume auto: no usable checkpoint in {}: starting from step 0", c.out);
  return 0;
}

}  // namespace mics::train
