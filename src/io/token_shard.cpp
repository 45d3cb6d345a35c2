// Reading token shards: open, validate the header and size, map read-only.
#include "io/token_shard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "base/error.hpp"

namespace mics::io {
namespace {

uint32_t load_le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint32_t load_le16(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8;
}

[[noreturn]] void fail(ErrorKind kind, const std::string& path, const std::string& problem,
                       const std::string& hint) {
  throw Error(kind, fmt::format("shard {}: {}", path, problem),
              {.layer = "io", .where = "reading a token shard", .hint = hint});
}

const char* kSupported =
    "supported: magic 20240520 version 1 (uint16 tokens), magic 20240801 version 7 (uint32 "
    "tokens)";

}  // namespace

TokenShard TokenShard::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      fail(ErrorKind::kUnavailable, path, "no such file",
           "check the path or glob of the data shards (mics data prepare / synth writes them)");
    fail(ErrorKind::kIo, path, fmt::format("cannot open: {}", errno_text(err)),
         "check the path and its permissions");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ErrorKind::kIo, path, fmt::format("cannot stat: {}", errno_text(err)), "");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::kInvalidArgument, path, "not a regular file",
         "give token shard files (*.bin), not directories or devices");
  }
  const auto file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    fail(ErrorKind::kInvalidArgument, path,
         fmt::format("file is {} bytes, shorter than the {}-byte header", file_bytes,
                     kShardHeaderBytes),
         "not a token shard, or truncated: regenerate it (mics data prepare / synth)");
  }
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping stays valid
  if (map == MAP_FAILED)
    fail(ErrorKind::kIo, path,
         fmt::format("cannot mmap {} bytes: {}", file_bytes, errno_text(map_err)), "");

  TokenShard shard;
  shard.path_ = path;
  shard.map_ = static_cast<const unsigned char*>(map);
  shard.map_bytes_ = file_bytes;  // from here on the destructor unmaps, also on a throw

  const auto magic = static_cast<int32_t>(load_le32(shard.map_));
  const auto version = static_cast<int32_t>(load_le32(shard.map_ + 4));
  const auto count = static_cast<int32_t>(load_le32(shard.map_ + 8));
  if (magic != kShardMagicU16 && magic != kShardMagicU32)
    fail(ErrorKind::kInvalidArgument, path,
         fmt::format("bad magic {} (expected {} for uint16 tokens or {} for uint32 tokens)", magic,
                     kShardMagicU16, kShardMagicU32),
         "not an llm.c token shard: regenerate it (mics data prepare / synth)");
  const int32_t want_version = magic == kShardMagicU16 ? kShardVersionU16 : kShardVersionU32;
  if (version != want_version)
    fail(ErrorKind::kInvalidArgument, path,
         fmt::format("unknown version {} for magic {} ({})", version, magic, kSupported),
         "regenerate the shard with a supported writer");
  if (count < 0)
    fail(ErrorKind::kInvalidArgument, path, fmt::format("negative token count {}", count),
         "the header is corrupt: regenerate the shard");
  shard.version_ = version;
  shard.token_bytes_ = magic == kShardMagicU16 ? 2 : 4;
  shard.count_ = static_cast<uint64_t>(count);
  const uint64_t expected =
      kShardHeaderBytes + shard.count_ * static_cast<uint64_t>(shard.token_bytes_);
  if (file_bytes != expected)
    fail(ErrorKind::kInvalidArgument, path,
         fmt::format("size {} bytes, header says {} tokens of {} bytes -> expected {} bytes ({})",
                     file_bytes, count, shard.token_bytes_, expected,
                     file_bytes < expected ? "truncated?" : "trailing bytes?"),
         "regenerate it (mics data prepare / synth)");
  return shard;
}

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      count_(std::exchange(other.count_, 0)),
      token_bytes_(other.token_bytes_),
      version_(other.version_) {}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    if (map_) ::munmap(const_cast<unsigned char*>(map_), map_bytes_);
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    count_ = std::exchange(other.count_, 0);
    token_bytes_ = other.token_bytes_;
    version_ = other.version_;
  }
  return *this;
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), map_bytes_);
}

uint32_t TokenShard::token(uint64_t i) const {
  MICS_CHECK(i < count_, fmt::format("token {} of shard {} with {} tokens", i, path_, count_));
  const unsigned char* p = map_ + kShardHeaderBytes + i * static_cast<uint64_t>(token_bytes_);
  return token_bytes_ == 2 ? load_le16(p) : load_le32(p);
}

void TokenShard::read(uint64_t first, size_t n, int32_t* out) const {
  MICS_CHECK(
      first <= count_ && n <= count_ - first,
      fmt::format("tokens [{}, {}) of shard {} with {} tokens", first, first + n, path_, count_));
  const unsigned char* p = map_ + kShardHeaderBytes + first * static_cast<uint64_t>(token_bytes_);
  if (token_bytes_ == 2) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      if constexpr (std::endian::native == std::endian::big)
        v = static_cast<uint16_t>(v << 8 | v >> 8);
      out[i] = static_cast<int32_t>(v);
    }
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(load_le32(p + 4 * i));
  }
}

void TokenShard::validate_tokens(int vocab) const {
  const auto limit = static_cast<uint32_t>(vocab > 0 ? vocab : 0);
  const unsigned char* base = map_ + kShardHeaderBytes;
  for (uint64_t i = 0; i < count_; ++i) {
    const uint32_t id = token_bytes_ == 2 ? load_le16(base + 2 * i) : load_le32(base + 4 * i);
    if (id >= limit)
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("shard {}: token at index {} is {}, not below the vocabulary size {}",
                              path_, i, id, vocab),
                  {.layer = "io",
                   .where = "validating token ids",
                   .hint = "the shard was made with another tokenizer: regenerate it or use a "
                           "model whose vocabulary covers it"});
  }
}

std::vector<uint64_t> TokenShard::histogram() const {
  std::vector<uint64_t> counts;
  const unsigned char* base = map_ + kShardHeaderBytes;
  for (uint64_t i = 0; i < count_; ++i) {
    const uint32_t id = token_bytes_ == 2 ? load_le16(base + 2 * i) : load_le32(base + 4 * i);
    if (id >= counts.size()) counts.resize(static_cast<size_t>(id) + 1, 0);
    ++counts[id];
  }
  return counts;
}

}  // namespace mics::io
