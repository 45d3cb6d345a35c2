// `mics data`: make and look at token shards.
//   prepare: text files -> byte-level token shards (DIR/<name>_train_NNNNNN.bin, _val_000000.bin)
//   inspect: a shard's header and token statistics (--json for scripts)
//   synth:   the synthetic Markov corpus with its exact entropy rate (io/markov_corpus.hpp)
// Bad input fails with one line naming the file and writes nothing.
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "base/strings.hpp"
#include "io/byte_tokenizer.hpp"
#include "io/markov_corpus.hpp"
#include "io/token_shard.hpp"
#include "tools/commands.hpp"

namespace mics::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- prepare ---------------------------------------------------------------------------------

struct PrepareOptions {
  std::string out, name;
  double val_fraction = 0.1;
  uint64_t shard_tokens = 100'000'000;
  std::vector<std::string> files;
};

std::string read_input(const std::string& path) {
  const ErrorContext ctx{
      .layer = "io", .where = "mics data prepare", .hint = "check the input file paths"};
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error(ErrorKind::kUnavailable, fmt::format("input {}: no such file", path), ctx);
  if (fs::is_directory(path, ec))
    throw Error(ErrorKind::kInvalidArgument, fmt::format("input {}: is a directory", path), ctx);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    throw Error(ErrorKind::kIo, fmt::format("input {}: cannot open: {}", path, errno_text(errno)),
                ctx);
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed)
    throw Error(ErrorKind::kIo, fmt::format("input {}: read error: {}", path, errno_text(err)),
                ctx);
  return text;
}

int run_prepare(const PrepareOptions& o) {
  const ErrorContext ctx{.layer = "io", .where = "mics data prepare"};
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))
    throw Error(ErrorKind::kInvalidArgument, fmt::format("--val-fraction {}", o.val_fraction),
                {.layer = "io", .where = "mics data prepare", .hint = "use a fraction in [0, 1)"});
  if (o.shard_tokens < 1 || o.shard_tokens > static_cast<uint64_t>(INT32_MAX))
    throw Error(ErrorKind::kInvalidArgument, fmt::format("--shard-tokens {}", o.shard_tokens),
                {.layer = "io",
                 .where = "mics data prepare",
                 .hint = fmt::format("use 1 .. {} (the header's count is an int32)", INT32_MAX)});
  // Read and tokenize everything before writing anything.
  std::vector<uint32_t> tokens;
  for (const std::string& f : o.files) {
    const auto ids = io::byte_encode(read_input(f));
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  const std::string name = o.name.empty() ? fs::path(o.files.front()).stem().string() : o.name;
  if (name.empty() || name.find('/') != std::string::npos)
    throw Error(
        ErrorKind::kInvalidArgument, fmt::format("shard name '{}'", name),
        {.layer = "io", .where = "mics data prepare", .hint = "give --name NAME without '/'"});
  const auto total = static_cast<uint64_t>(tokens.size());
  const auto val = static_cast<uint64_t>(std::floor(static_cast<double>(total) * o.val_fraction));
  const uint64_t train = total - val;
  if (train == 0)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("the input ({}) holds {} bytes: nothing to train on",
                            join(o.files, ", "), total),
                {.layer = "io",
                 .where = "mics data prepare",
                 .hint = "give non-empty text files (or a smaller --val-fraction)"});

  std::error_code ec;
  const bool created = !fs::exists(o.out, ec);
  fs::create_directories(o.out, ec);
  if (ec || !fs::is_directory(o.out))
    throw Error(ErrorKind::kIo,
                fmt::format("cannot create output directory {}: {}", o.out,
                            ec ? ec.message() : "exists and is not a directory"),
                {.layer = "io", .where = "mics data prepare", .hint = "choose another --out"});
  std::vector<std::string> written;
  std::vector<std::string> report;
  auto write = [&](const std::string& path, std::span<const uint32_t> part) {
    io::write_token_shard(path, part);
    written.push_back(path);
    report.push_back(fmt::format("wrote {}: {} tokens (uint16, {} bytes)", path, part.size(),
                                 io::kShardHeaderBytes + 2 * part.size()));
  };
  try {
    const std::span<const uint32_t> all(tokens);
    uint64_t k = 0;
    for (uint64_t first = 0; first < train; first += o.shard_tokens, ++k)
      write((fs::path(o.out) / fmt::format("{}_train_{:06d}.bin", name, k)).string(),
            all.subspan(first, std::min(o.shard_tokens, train - first)));
    if (val > 0)
      write((fs::path(o.out) / fmt::format("{}_val_000000.bin", name)).string(),
            all.subspan(train, val));
  } catch (...) {
    for (const std::string& p : written) fs::remove(p, ec);
    if (created) fs::remove(o.out, ec);  // only when empty
    throw;
  }
  for (const std::string& line : report) fmt::print("{}\n", line);
  fmt::print(
      "prepared {} tokens from {} file(s): {} train in {} shard(s), {} val; byte-level "
      "vocabulary {}\n",
      total, o.files.size(), train, written.size() - (val > 0 ? 1 : 0), val, io::kByteVocab);
  return 0;
}

// ---- inspect ----------------------------------------------------------------------------------

int run_inspect(const std::vector<std::string>& files, bool as_json) {
  std::vector<io::TokenShard> shards;
  for (const std::string& f : files) shards.push_back(io::TokenShard::open(f));
  json out = json::array();
  for (const io::TokenShard& s : shards) {
    const auto hist = s.histogram();
    uint64_t distinct = 0;
    int64_t min_id = -1, max_id = -1;
    double entropy = 0;
    std::vector<std::pair<uint64_t, uint32_t>> by_count;  // (count, id)
    for (size_t id = 0; id < hist.size(); ++id) {
      if (hist[id] == 0) continue;
      ++distinct;
      if (min_id < 0) min_id = static_cast<int64_t>(id);
      max_id = static_cast<int64_t>(id);
      const double p = static_cast<double>(hist[id]) / static_cast<double>(s.size());
      entropy -= p * std::log(p);
      by_count.emplace_back(hist[id], static_cast<uint32_t>(id));
    }
    std::sort(by_count.begin(), by_count.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    if (by_count.size() > 10) by_count.resize(10);
    json top = json::array();
    for (const auto& [count, id] : by_count)
      top.push_back({{"id", id},
                     {"count", count},
                     {"share", static_cast<double>(count) / static_cast<double>(s.size())}});
    const bool wide = s.token_bytes() == 4;
    json j = {
        {"path", s.path()},
        {"magic", wide ? io::kShardMagicU32 : io::kShardMagicU16},
        {"version", s.version()},
        {"token_bytes", s.token_bytes()},
        {"tokens", s.size()},
        {"file_bytes", io::kShardHeaderBytes + s.size() * static_cast<uint64_t>(s.token_bytes())},
        {"distinct_ids", distinct},
        {"min_id", min_id},
        {"max_id", max_id},
        {"top", top},
        {"unigram_entropy_nats", entropy}};
    // A synthetic corpus knows the best loss possible on it.
    try {
      const double floor = io::read_entropy_floor(fs::path(s.path()).parent_path().string());
      if (floor >= 0) j["source_entropy_rate_nats"] = floor;
    } catch (const Error&) {
    }
    if (s.size() > 0 && max_id < io::kByteVocab && !j.contains("source_entropy_rate_nats")) {
      std::vector<int32_t> head(std::min<uint64_t>(s.size(), 96));
      s.read(0, head.size(), head.data());
      j["sample"] = io::byte_decode(head);
    }
    out.push_back(std::move(j));
  }
  if (as_json) {
    fmt::print("{}\n", json{{"files", out}}.dump(2));
    return 0;
  }
  for (const json& j : out) {
    fmt::print("{}\n", j["path"].get<std::string>());
    fmt::print("  header:    magic {}, version {}, {}-byte tokens, {} tokens\n", j["magic"].dump(),
               j["version"].dump(), j["token_bytes"].dump(), j["tokens"].dump());
    fmt::print("  file size: {} bytes\n", j["file_bytes"].dump());
    if (j["tokens"] == 0) {
      fmt::print("  (empty shard)\n");
      continue;
    }
    fmt::print("  ids:       {} distinct, min {}, max {}\n", j["distinct_ids"].dump(),
               j["min_id"].dump(), j["max_id"].dump());
    fmt::print("  unigram entropy: {:.4f} nats/token\n", j["unigram_entropy_nats"].get<double>());
    if (j.contains("source_entropy_rate_nats"))
      fmt::print("  source entropy rate (corpus.json): {:.4f} nats/token\n",
                 j["source_entropy_rate_nats"].get<double>());
    fmt::print("  top ids:  ");
    for (const json& t : j["top"])
      fmt::print(" {} ({}, {:.2f}%)", t["id"].dump(), t["count"].dump(),
                 100 * t["share"].get<double>());
    fmt::print("\n");
    if (j.contains("sample")) fmt::print("  as bytes:  \"{}\"\n", j["sample"].get<std::string>());
  }
  return 0;
}

// ---- synth --------------------------------------------------------------------------------------

struct SynthOptions {
  std::string out;
  uint64_t tokens = 0, shard_tokens = 100'000'000;
  int64_t val_tokens = -1;
  io::MarkovSpec spec;
};

int run_synth(const SynthOptions& o) {
  const bool existed = fs::exists(fs::path(o.out) / "corpus.json");
  const uint64_t val = o.val_tokens >= 0 ? static_cast<uint64_t>(o.val_tokens) : o.tokens / 10;
  const io::SynthResult r =
      io::write_synthetic_corpus(o.out, o.spec, o.tokens, val, o.shard_tokens);
  fmt::print("{} {}: Markov source with {} states, branching {}, vocabulary {}, seed {}\n",
             existed ? "reused" : "wrote", o.out, o.spec.states, o.spec.branching, o.spec.vocab,
             o.spec.seed);
  for (const auto& p : r.train) fmt::print("  train {}\n", p);
  for (const auto& p : r.val) fmt::print("  val   {}\n", p);
  fmt::print("entropy rate: {:.6f} nats/token (the lowest loss a model can reach on it)\n",
             r.entropy_rate_nats);
  return 0;
}

}  // namespace

Runner add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Make and inspect token shards (llm.c layout)");
  data->require_subcommand(1);

  auto prep = std::make_shared<PrepareOptions>();
  CLI::App* p = data->add_subcommand("prepare", "Text files -> byte-level token shards");
  p->add_option("--out", prep->out, "output directory")->required()->type_name("DIR");
  p->add_option("--name", prep->name, "shard name prefix (default: the first file's stem)");
  p->add_option("--val-fraction", prep->val_fraction,
                "share of the tokens (the last ones) for validation")
      ->capture_default_str();
  p->add_option("--shard-tokens", prep->shard_tokens, "tokens per train shard at most")
      ->capture_default_str();
  p->add_option("files", prep->files, "text files, concatenated in order")->required();

  auto inspect_files = std::make_shared<std::vector<std::string>>();
  auto inspect_json = std::make_shared<bool>(false);
  CLI::App* i = data->add_subcommand("inspect", "Header and token statistics of shards");
  i->add_flag("--json", *inspect_json, "print JSON instead of text");
  i->add_option("files", *inspect_files, "shard files")->required();

  auto syn = std::make_shared<SynthOptions>();
  CLI::App* s = data->add_subcommand("synth", "The synthetic Markov corpus and its entropy rate");
  s->add_option("--out", syn->out, "output directory (made atomically)")
      ->required()
      ->type_name("DIR");
  s->add_option("--tokens", syn->tokens, "train tokens")->required()->check(CLI::PositiveNumber);
  s->add_option("--seed", syn->spec.seed, "seed of the source")->capture_default_str();
  s->add_option("--val-tokens", syn->val_tokens, "validation tokens (default: tokens / 10)");
  s->add_option("--states", syn->spec.states, "states (token ids 0..K-1)")->capture_default_str();
  s->add_option("--branching", syn->spec.branching, "successors per state")->capture_default_str();
  s->add_option("--vocab", syn->spec.vocab, "vocabulary size")->capture_default_str();
  s->add_option("--shard-tokens", syn->shard_tokens, "tokens per train shard at most")
      ->capture_default_str();

  return [=]() -> int {
    if (p->parsed()) return run_prepare(*prep);
    if (i->parsed()) return run_inspect(*inspect_files, *inspect_json);
    if (s->parsed()) return run_synth(*syn);
    return 2;
  };
}

}  // namespace mics::tools
