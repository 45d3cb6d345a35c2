#pragma once
// Token shards in llm.c's layout, so shards made by llm.c's scripts load unchanged:
// a header of 256 little-endian int32 (magic, version, token count, the rest 0), then the
// tokens. Two kinds are read and written:
//   magic 20240520, version 1: uint16 tokens (GPT-2's tokenizer, our byte tokenizer)
//   magic 20240801, version 7: uint32 tokens (llm.c's Llama 3 shards)
// The file size must be exactly 1024 + token_bytes * count.
//
// Errors are mics::Error (layer "io") naming the file and what is wrong: missing, too short,
// bad magic, unknown version, size mismatch, a token id >= the model's vocabulary.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mics::io {

constexpr int32_t kShardMagicU16 = 20240520;
constexpr int32_t kShardVersionU16 = 1;
constexpr int32_t kShardMagicU32 = 20240801;
constexpr int32_t kShardVersionU32 = 7;
constexpr size_t kShardHeaderBytes = 256 * sizeof(int32_t);

// A read-only, memory-mapped shard. Validation of the header and size happens in open();
// token ids are checked against `vocab` by validate_tokens() (a full scan; the loader runs it
// once per shard at start-up, so a bad id is found before training, not mid-run).
class TokenShard {
 public:
  static TokenShard open(const std::string& path);
  TokenShard(TokenShard&&) noexcept;
  TokenShard& operator=(TokenShard&&) noexcept;
  ~TokenShard();

  const std::string& path() const { return path_; }
  uint64_t size() const { return count_; }          // tokens
  int token_bytes() const { return token_bytes_; }  // 2 or 4
  int32_t version() const { return version_; }
  uint32_t token(uint64_t i) const;
  // Copies tokens [first, first + n) into out as int32.
  void read(uint64_t first, size_t n, int32_t* out) const;
  // Throws naming the file, the position and the id of the first token >= vocab.
  void validate_tokens(int vocab) const;
  // Counts per token id (size = max id + 1).
  std::vector<uint64_t> histogram() const;

 private:
  TokenShard() = default;
  std::string path_;
  const unsigned char* map_ = nullptr;
  size_t map_bytes_ = 0;
  uint64_t count_ = 0;
  int token_bytes_ = 2;
  int32_t version_ = 0;
};

// Writes a shard (uint16 when every id < 65536, else uint32) to a temporary name in the same
// directory, fsyncs and renames it: a crash never leaves a half-written shard under `path`.
void write_token_shard(const std::string& path, std::span<const uint32_t> tokens);

// Expands a comma-separated list of glob patterns into sorted file paths; throws naming the
// pattern when one matches nothing.
std::vector<std::string> expand_shard_glob(const std::string& patterns);

}  // namespace mics::io
