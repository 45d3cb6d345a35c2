// The synthetic corpus on disk: shards of a MarkovSource and corpus.json, generated into a
// temporary directory and renamed into place (first rename wins when several ranks race).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <filesystem>
#include <fstream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "io/markov_corpus.hpp"
#include "io/token_shard.hpp"

namespace mics::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<uint64_t> g_tmp_counter{0};

ErrorContext ctx(const std::string& hint = "") {
  return {.layer = "io", .where = "writing the synthetic corpus", .hint = hint};
}

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_text_durable(const fs::path& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error(ErrorKind::kIo,
                fmt::format("cannot create {}: {}", path.string(), errno_text(errno)),
                ctx("check the directory is writable"));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : EIO;
      ::close(fd);
      throw Error(ErrorKind::kIo,
                  fmt::format("cannot write {}: {}", path.string(), errno_text(err)),
                  ctx(err == ENOSPC ? "the disk is full" : ""));
    }
    done += static_cast<size_t>(w);
  }
  ::fsync(fd);
  ::close(fd);
}

std::optional<json> read_corpus_json(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  std::ifstream in(file);
  if (!in)
    throw Error(ErrorKind::kIo, fmt::format("cannot read {}", file.string()),
                {.layer = "io", .where = "reading a corpus description"});
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{} is not valid JSON: {}", file.string(), e.what()),
                {.layer = "io",
                 .where = "reading a corpus description",
                 .hint = "remove the corpus directory and generate it again"});
  }
}

// The corpus already in dir, when it is the one asked for; nullopt when dir is missing or an
// empty directory. Throws when dir holds something else.
std::optional<SynthResult> existing_corpus(const fs::path& dir, const MarkovSpec& spec,
                                           uint64_t train_tokens, uint64_t val_tokens) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return std::nullopt;
  const std::string hint =
      fmt::format("remove {} or choose another output directory", dir.string());
  if (!fs::is_directory(dir, ec))
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{} exists and is not a directory", dir.string()), ctx(hint));
  const auto meta = read_corpus_json(dir / "corpus.json");
  if (!meta) {
    if (fs::is_empty(dir, ec)) return std::nullopt;
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{} exists, is not empty and has no corpus.json", dir.string()),
                ctx(hint));
  }
  const json& m = *meta;
  try {
    const bool same = m.at("source") == "markov" && m.at("vocab") == spec.vocab &&
                      m.at("states") == spec.states && m.at("branching") == spec.branching &&
                      m.value("first_token", 0) == spec.first_token && m.at("seed") == spec.seed &&
                      m.at("train_tokens") == train_tokens && m.at("val_tokens") == val_tokens;
    if (!same)
      throw Error(
          ErrorKind::kInvalidArgument,
          fmt::format("{} holds another synthetic corpus (vocab {}, states {}, branching {}, "
                      "seed {}, {} train / {} val tokens); asked for vocab {}, states {}, "
                      "branching {}, seed {}, {} train / {} val tokens",
                      dir.string(), m.at("vocab").dump(), m.at("states").dump(),
                      m.at("branching").dump(), m.at("seed").dump(), m.at("train_tokens").dump(),
                      m.at("val_tokens").dump(), spec.vocab, spec.states, spec.branching, spec.seed,
                      train_tokens, val_tokens),
          ctx(hint));
    SynthResult r;
    r.entropy_rate_nats = m.at("entropy_rate_nats").get<double>();
    uint64_t train_found = 0, val_found = 0;
    for (const auto& name : m.at("train_files")) {
      r.train.push_back((dir / name.get<std::string>()).string());
      train_found += TokenShard::open(r.train.back()).size();
    }
    for (const auto& name : m.at("val_files")) {
      r.val.push_back((dir / name.get<std::string>()).string());
      val_found += TokenShard::open(r.val.back()).size();
    }
    if (train_found != train_tokens || val_found != val_tokens)
      throw Error(
          ErrorKind::kInvalidArgument,
          fmt::format("the shards in {} hold {} train / {} val tokens, corpus.json says {} / {}",
                      dir.string(), train_found, val_found, train_tokens, val_tokens),
          ctx(hint));
    return r;
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{} lacks a field of a synthetic corpus: {}",
                            (dir / "corpus.json").string(), e.what()),
                ctx(hint));
  } catch (const Error& e) {
    if (e.context().where == "writing the synthetic corpus") throw;
    throw Error(e.kind(), fmt::format("corpus {} is damaged: {}", dir.string(), e.message()),
                ctx(hint));
  }
}

}  // namespace

SynthResult write_synthetic_corpus(const std::string& dir_arg, const MarkovSpec& spec,
                                   uint64_t train_tokens, uint64_t val_tokens,
                                   uint64_t shard_tokens) {
  if (train_tokens == 0 || shard_tokens == 0 || shard_tokens > static_cast<uint64_t>(INT32_MAX))
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("train tokens {} and shard tokens {}", train_tokens, shard_tokens),
                ctx(fmt::format("need train tokens > 0 and 0 < shard tokens <= {}", INT32_MAX)));
  fs::path dir = fs::path(dir_arg).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "out/" -> "out"
  if (dir.empty())
    throw Error(ErrorKind::kInvalidArgument, "empty output directory", ctx("give --out DIR"));
  if (auto found = existing_corpus(dir, spec, train_tokens, val_tokens)) return *found;

  const MarkovSource source(spec);
  std::error_code ec;
  if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), ec);
  const fs::path tmp =
      fmt::format("{}.tmp-{}-{}", dir.string(), ::getpid(), g_tmp_counter.fetch_add(1));
  if (!fs::create_directory(tmp, ec) || ec)
    throw Error(ErrorKind::kIo, fmt::format("cannot create {}: {}", tmp.string(), ec.message()),
                ctx("check the parent directory exists and is writable"));

  SynthResult names;  // file names relative to the directory
  names.entropy_rate_nats = source.entropy_rate_nats();
  try {
    uint64_t k = 0;
    for (uint64_t first = 0; first < train_tokens; first += shard_tokens, ++k) {
      const uint64_t n = std::min(shard_tokens, train_tokens - first);
      const std::string name = fmt::format("synth_train_{:06d}.bin", k);
      write_token_shard((tmp / name).string(), source.generate(n, k));
      names.train.push_back(name);
    }
    if (val_tokens > 0) {
      if (val_tokens > static_cast<uint64_t>(INT32_MAX))
        throw Error(ErrorKind::kInvalidArgument, fmt::format("{} validation tokens", val_tokens),
                    ctx("the validation shard holds at most 2^31-1 tokens"));
      const std::string name = "synth_val_000000.bin";
      write_token_shard((tmp / name).string(), source.generate(val_tokens, UINT64_MAX));
      names.val.push_back(name);
    }
    json meta = {{"source", "markov"},
                 {"vocab", spec.vocab},
                 {"states", spec.states},
                 {"branching", spec.branching},
                 {"first_token", spec.first_token},
                 {"seed", spec.seed},
                 {"entropy_rate_nats", source.entropy_rate_nats()},
                 {"train_tokens", train_tokens},
                 {"val_tokens", val_tokens},
                 {"shard_tokens", shard_tokens},
                 {"train_files", names.train},
                 {"val_files", names.val}};
    write_text_durable(tmp / "corpus.json", meta.dump(2) + "\n");
    fsync_path(tmp, true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }

  if (::rename(tmp.c_str(), dir.c_str()) != 0) {
    const int err = errno;
    fs::remove_all(tmp, ec);
    if (err == EEXIST || err == ENOTEMPTY) {
      // Another process or thread renamed its copy first: use it (it must be the same corpus).
      if (auto found = existing_corpus(dir, spec, train_tokens, val_tokens)) return *found;
    }
    throw Error(
        ErrorKind::kIo,
        fmt::format("cannot rename {} to {}: {}", tmp.string(), dir.string(), errno_text(err)),
        ctx(fmt::format("remove {} or choose another output directory", dir.string())));
  }
  fsync_path(dir.has_parent_path() ? dir.parent_path() : fs::path("."), true);

  SynthResult r;
  r.entropy_rate_nats = names.entropy_rate_nats;
  for (const auto& n : names.train) r.train.push_back((dir / n).string());
  for (const auto& n : names.val) r.val.push_back((dir / n).string());
  return r;
}

double read_entropy_floor(const std::string& dir) {
  const auto meta = read_corpus_json(fs::path(dir) / "corpus.json");
  if (!meta || !meta->is_object() || !meta->contains("entropy_rate_nats") ||
      !(*meta)["entropy_rate_nats"].is_number())
    return -1.0;
  return (*meta)["entropy_rate_nats"].get<double>();
}

}  // namespace mics::io
