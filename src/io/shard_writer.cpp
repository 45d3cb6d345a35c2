// Writing token shards atomically: a temporary file in the same directory, fsync, rename,
// fsync of the directory. A failed write (e.g. a full disk) removes the temporary file.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "base/error.hpp"
#include "io/token_shard.hpp"

namespace mics::io {
namespace {

std::atomic<uint64_t> g_tmp_counter{0};

[[noreturn]] void write_failed(const std::string& path, const std::string& what, int err) {
  std::string hint = "check the directory exists and is writable";
  if (err == ENOSPC || err == EDQUOT) hint = "the disk is full: free space or write elsewhere";
  if (err == EFBIG) hint = "the file is too large for this file system or process limit";
  throw Error(ErrorKind::kIo,
              fmt::format("cannot write shard {}: {}: {}", path, what, errno_text(err)),
              {.layer = "io", .where = "writing a token shard", .hint = hint});
}

bool write_all(int fd, const unsigned char* data, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

void put_le32(unsigned char* p, uint32_t v) {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
  p[2] = static_cast<unsigned char>(v >> 16);
  p[3] = static_cast<unsigned char>(v >> 24);
}

}  // namespace

void write_token_shard(const std::string& path, std::span<const uint32_t> tokens) {
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("shard {}: {} tokens do not fit the int32 count of the header", path,
                            tokens.size()),
                {.layer = "io",
                 .where = "writing a token shard",
                 .hint = "split the tokens over several shards"});
  uint32_t max_id = 0;
  for (uint32_t t : tokens) max_id = std::max(max_id, t);
  const bool wide = max_id > 0xffff;
  const int token_bytes = wide ? 4 : 2;

  std::vector<unsigned char> header(kShardHeaderBytes, 0);
  put_le32(header.data(), static_cast<uint32_t>(wide ? kShardMagicU32 : kShardMagicU16));
  put_le32(header.data() + 4, static_cast<uint32_t>(wide ? kShardVersionU32 : kShardVersionU16));
  put_le32(header.data() + 8, static_cast<uint32_t>(tokens.size()));

  const std::string tmp = fmt::format("{}.tmp-{}-{}", path, ::getpid(), g_tmp_counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) write_failed(path, fmt::format("cannot create {}", tmp), errno);
  auto abandon = [&](const std::string& what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    write_failed(path, what, err);
  };
  if (!write_all(fd, header.data(), header.size())) abandon("writing the header", errno);
  constexpr size_t kChunk = 1 << 18;  // tokens per write
  std::vector<unsigned char> buf(kChunk * 4);
  for (size_t first = 0; first < tokens.size(); first += kChunk) {
    const size_t n = std::min(kChunk, tokens.size() - first);
    unsigned char* p = buf.data();
    for (size_t i = 0; i < n; ++i) {
      const uint32_t v = tokens[first + i];
      if (wide) {
        put_le32(p, v);
        p += 4;
      } else {
        p[0] = static_cast<unsigned char>(v);
        p[1] = static_cast<unsigned char>(v >> 8);
        p += 2;
      }
    }
    if (!write_all(fd, buf.data(), n * static_cast<size_t>(token_bytes)))
      abandon("writing the tokens", errno);
  }
  if (::fsync(fd) != 0) abandon("fsync", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    write_failed(path, "close", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    write_failed(path, fmt::format("renaming {} into place", tmp), err);
  }
  // Make the rename durable. Some file systems cannot fsync a directory; that is not an error.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace mics::io
