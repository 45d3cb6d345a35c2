#include "io/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <queue>
#include <sstream>
#include <thread>
#include <tuple>

#include <fmt/format.h>

#include "base/clock.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"

namespace mics::io {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kK1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kK2 = 0xD6E8FEB86659FD93ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t lane_step(uint64_t lane, uint64_t w) { return rotl(lane + w * kK1, 29) * kK2; }
inline uint64_t mix(uint64_t h) {  // bijective finalizer
  h ^= h >> 32;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 29;
  h *= 0x94D049BB133111EBull;
  h ^= h >> 32;
  return h;
}

[[noreturn]] void io_error(const std::string& message, const std::string& hint, ErrorKind kind = ErrorKind::kIo) {
  throw Error(kind, message, {.layer = "io", .where = "checkpoint", .hint = hint});
}

std::string sys_hint(int err) {
  switch (err) {
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return "the filesystem is full (or a file size limit was hit): free space or point --out elsewhere";
    case EACCES:
    case EPERM:
    case EROFS:
      return "the checkpoint directory is not writable: fix its permissions or point --out elsewhere";
    case ENOENT:
      return "the checkpoint directory vanished or was never created: check --out";
    default:
      return "check the filesystem of the checkpoint directory";
  }
}

[[noreturn]] void sys_error(const std::string& what, const std::string& path, int err) {
  throw SystemError(err, fmt::format("{} {}: {}", what, path, errno_text(err)),
                    {.layer = "io", .where = "checkpoint", .hint = sys_hint(err)});
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) sys_error("cannot open (to fsync)", path, errno);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    sys_error("cannot fsync", path, err);
  }
  ::close(fd);
}

void write_all(int fd, const void* data, size_t bytes, uint64_t offset, const std::string& path, size_t piece,
               int delay_ms) {
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < bytes) {
    const size_t n = std::min(piece, bytes - done);
    const ssize_t w = ::pwrite(fd, p + done, n, static_cast<off_t>(offset + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      sys_error("cannot write", path, errno);
    }
    if (w == 0) sys_error("cannot write", path, ENOSPC);
    done += static_cast<size_t>(w);
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  }
}

// Writes a small file durably: tmp, fsync, rename (the caller fsyncs the directory).
void write_file_durably(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) sys_error("cannot create", tmp, errno);
  try {
    write_all(fd, text.data(), text.size(), 0, tmp, text.size() + 1, 0);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    sys_error("cannot fsync", tmp, err);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    sys_error("cannot rename to", path, err);
  }
}

uint64_t parse_hex(const std::string& s) { return std::stoull(s, nullptr, 16); }

nlohmann::json read_json(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) io_error(fmt::format("{}: cannot read {}: {}", what, path, errno_text(errno)), "the checkpoint is incomplete");
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    io_error(fmt::format("{}: {} is not valid JSON: {}", what, path, e.what()), "the checkpoint is damaged",
             ErrorKind::kProtocol);
  }
}

}  // namespace

uint64_t digest64(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t a[4] = {kK1, kK2, kK1 ^ kK2, ~kK1};
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    uint64_t w[4];
    std::memcpy(w, p + i, 32);
    a[0] = lane_step(a[0], w[0]);
    a[1] = lane_step(a[1], w[1]);
    a[2] = lane_step(a[2], w[2]);
    a[3] = lane_step(a[3], w[3]);
  }
  for (int l = 0; i < bytes; ++l, i += 8) {  // the tail: whole or zero-padded words
    uint64_t w = 0;
    std::memcpy(&w, p + i, std::min<size_t>(8, bytes - i));
    a[l] = lane_step(a[l], w);
  }
  uint64_t h = mix(static_cast<uint64_t>(bytes) * kK2);
  for (uint64_t lane : a) h = mix(h ^ lane);
  return h;
}

std::string digest_hex(uint64_t digest) { return fmt::format("{:016x}", digest); }
std::string step_dir_name(uint64_t step) { return fmt::format("step-{:08d}", step); }
std::string rank_file_name(int rank) { return fmt::format("rank-{:05d}.bin", rank); }

WriteStats write_shard_file(const std::string& dir, const std::string& file, const std::vector<WriteChunk>& chunks) {
  const auto t0 = Clock::now();
  const std::string path = dir + "/" + file;
  const int delay = static_cast<int>(knobs().debug_ckpt_write_delay_ms);
  const size_t piece = delay > 0 ? (64u << 10) : (64u << 20);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) sys_error("cannot create checkpoint file", path, errno);
  nlohmann::json index = nlohmann::json::array();
  uint64_t offset = 0;
  try {
    for (const WriteChunk& c : chunks) {
      const bool strided = c.run != 0 && c.run != c.length;
      if (strided && (c.length % c.run != 0 || c.run > c.stride))
        throw Error(ErrorKind::kInternal,
                    fmt::format("checkpoint chunk of {} at {}: {} elements are not rows of {} at most {} apart", c.tensor,
                                c.offset, c.length, c.run, c.stride),
                    {.layer = "io", .where = "checkpoint", .hint = "a mics bug: the writer's placement is inconsistent"});
      const size_t bytes = c.length * sizeof(float);
      const uint64_t d = digest64(c.data, bytes);
      write_all(fd, c.data, bytes, offset, path, piece, delay);
      index.push_back({{"tensor", c.tensor}, {"numel", c.numel}, {"offset", c.offset}, {"length", c.length},
                       {"file_offset", offset}, {"digest", digest_hex(d)}});
      if (strided) index.back()["run"] = c.run, index.back()["stride"] = c.stride;
      offset += bytes;
    }
    if (::fsync(fd) != 0) sys_error("cannot fsync", path, errno);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) sys_error("cannot close", path, errno);
  const nlohmann::json doc = {{"file", file}, {"bytes", offset}, {"chunks", index}};
  write_file_durably(dir + "/" + fs::path(file).stem().string() + ".index.json", doc.dump());
  fsync_path(dir, true);
  return {offset, seconds_since(t0)};
}

namespace {

ChunkInfo chunk_from_json(const nlohmann::json& c, std::string file) {
  ChunkInfo ci{c.at("offset"), c.at("length"), std::move(file), c.at("file_offset"), parse_hex(c.at("digest"))};
  if (c.contains("run")) {
    ci.run = c.at("run");
    ci.stride = c.at("stride");
  }
  return ci;
}

nlohmann::json chunk_to_json(const ChunkInfo& c) {
  nlohmann::json j = {{"offset", c.offset}, {"length", c.length}, {"file", c.file}, {"file_offset", c.file_offset},
                      {"digest", digest_hex(c.digest)}};
  if (c.strided()) j["run"] = c.run, j["stride"] = c.stride;
  return j;
}

}  // namespace

std::string check_tiling(std::vector<ChunkInfo>& chunks, uint64_t numel) {
  std::sort(chunks.begin(), chunks.end(), [](const ChunkInfo& x, const ChunkInfo& y) { return x.offset < y.offset; });
  for (const ChunkInfo& c : chunks)
    if (c.strided() && (c.length % c.run != 0 || c.run > c.stride))
      return fmt::format("a strided chunk at element {} in {} whose {} elements are not rows of {} at most {} apart", c.offset,
                         c.file, c.length, c.run, c.stride);
  // The rows of all chunks in order of their first element: (start, chunk, row).
  using Row = std::tuple<uint64_t, size_t, uint64_t>;
  std::priority_queue<Row, std::vector<Row>, std::greater<>> heap;
  for (size_t i = 0; i < chunks.size(); ++i) heap.emplace(chunks[i].offset, i, 0);
  uint64_t next = 0;
  while (!heap.empty()) {
    const auto [start, i, row] = heap.top();
    heap.pop();
    const ChunkInfo& c = chunks[i];
    if (start != next)
      return fmt::format("{} at element {} (a chunk row from {} starts at {})", start < next ? "overlapping chunks" : "a gap",
                         next, c.file, start);
    next = start + c.row_length();
    if (row + 1 < c.rows()) heap.emplace(start + c.row_stride(), i, row + 1);
  }
  if (next != numel) return fmt::format("chunks that cover up to element {} of {}", next, numel);
  return "";
}

void commit_manifest(const std::string& dir, const std::vector<std::string>& files, uint64_t step,
                     const nlohmann::json& training, const nlohmann::json& model) {
  std::map<std::string, TensorInfo> tensors;
  std::vector<std::string> order;
  nlohmann::json file_list = nlohmann::json::array();
  for (const std::string& file : files) {
    const std::string index_path = dir + "/" + fs::path(file).stem().string() + ".index.json";
    const nlohmann::json idx = read_json(index_path, "commit of " + dir);
    file_list.push_back({{"name", file}, {"bytes", idx.at("bytes")}});
    for (const auto& c : idx.at("chunks")) {
      const std::string name = c.at("tensor");
      auto [it, fresh] = tensors.try_emplace(name);
      if (fresh) {
        it->second.name = name;
        it->second.numel = c.at("numel");
        order.push_back(name);
      }
      it->second.chunks.push_back(chunk_from_json(c, file));
    }
  }
  nlohmann::json jt = nlohmann::json::array();
  bool any_strided = false;
  for (const std::string& name : order) {
    TensorInfo& t = tensors[name];
    const std::string problem = check_tiling(t.chunks, t.numel);
    if (!problem.empty())
      io_error(fmt::format("commit of {}: tensor {} has {}", dir, name, problem),
               "a mics bug: the writers' ranges do not tile the tensor", ErrorKind::kInternal);
    nlohmann::json chunks = nlohmann::json::array();
    for (const ChunkInfo& c : t.chunks) {
      any_strided = any_strided || c.strided();
      chunks.push_back(chunk_to_json(c));
    }
    jt.push_back({{"name", name}, {"dtype", "f32"}, {"shape", {t.numel}}, {"chunks", chunks}});
  }
  const nlohmann::json manifest = {{"format", "mics-checkpoint"}, {"version", any_strided ? 2 : 1}, {"digest", "mics64"},
                                   {"step", step},                {"training", training},          {"model", model},
                                   {"files", file_list},          {"tensors", jt}};
  write_file_durably(dir + "/" + kManifestName, manifest.dump(1));
  fsync_path(dir, true);
}

bool remove_checkpoint(const std::string& dir) {
  std::error_code ec;
  fs::remove(fs::path(dir) / kManifestName, ec);
  if (ec) return false;
  fs::remove_all(dir, ec);
  return !ec;
}

std::vector<StepDir> list_checkpoints(const std::string& root) {
  std::vector<StepDir> out;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() != 13 || name.rfind("step-", 0) != 0) continue;
    if (name.find_first_not_of("0123456789", 5) != std::string::npos) continue;
    StepDir d;
    d.step = std::stoull(name.substr(5));
    d.path = it->path().string();
    d.committed = fs::exists(it->path() / kManifestName);
    out.push_back(d);
  }
  std::sort(out.begin(), out.end(), [](const StepDir& a, const StepDir& b) { return a.step > b.step; });
  return out;
}

CheckpointReader::CheckpointReader(std::string dir) : dir_(std::move(dir)) {
  const std::string mpath = dir_ + "/" + kManifestName;
  if (!fs::exists(dir_))
    io_error(fmt::format("checkpoint {} does not exist", dir_), "give a step-XXXXXXXX directory or a run directory");
  if (!fs::exists(mpath))
    io_error(fmt::format("checkpoint {} has no {}: not a committed checkpoint (an unfinished or failed save)", dir_,
                         kManifestName),
             "use an older checkpoint; this one was never committed");
  manifest_ = read_json(mpath, "checkpoint " + dir_);
  try {
    if (manifest_.at("format") != "mics-checkpoint" || (manifest_.at("version") != 1 && manifest_.at("version") != 2))
      io_error(fmt::format("checkpoint {}: unknown format {} version {}", dir_, manifest_.at("format").dump(),
                           manifest_.at("version").dump()),
               "this mics reads mics-checkpoint versions 1 and 2", ErrorKind::kProtocol);
    step_ = manifest_.at("step");
    std::map<std::string, uint64_t> file_bytes;
    for (const auto& f : manifest_.at("files")) {
      const std::string name = f.at("name");
      const uint64_t bytes = f.at("bytes");
      std::error_code ec;
      const uint64_t have = fs::file_size(fs::path(dir_) / name, ec);
      if (ec)
        io_error(fmt::format("checkpoint {}: shard file {} is missing ({})", dir_, name, ec.message()),
                 "the checkpoint is incomplete: use an older one");
      if (have != bytes)
        io_error(fmt::format("checkpoint {}: shard file {} has {} bytes, the manifest says {} (truncated or overwritten)",
                             dir_, name, have, bytes),
                 "the checkpoint is damaged: use an older one");
      file_bytes[name] = bytes;
    }
    for (const auto& jt : manifest_.at("tensors")) {
      TensorInfo t;
      t.name = jt.at("name");
      t.dtype = jt.at("dtype");
      t.numel = jt.at("shape").at(0);
      for (const auto& c : jt.at("chunks")) {
        ChunkInfo ci = chunk_from_json(c, c.at("file"));
        auto f = file_bytes.find(ci.file);
        if (f == file_bytes.end() || ci.file_offset + ci.length * 4 > f->second || (ci.strided() && ci.end() > t.numel))
          io_error(fmt::format("checkpoint {}: tensor {} chunk at element {} is inconsistent (file {}, offset {})", dir_,
                               t.name, ci.offset, ci.file, ci.file_offset),
                   "the manifest is damaged: use an older checkpoint", ErrorKind::kProtocol);
        t.chunks.push_back(std::move(ci));
      }
      const std::string problem = check_tiling(t.chunks, t.numel);
      if (!problem.empty())
        io_error(fmt::format("checkpoint {}: tensor {} has {}", dir_, t.name, problem),
                 "the manifest is damaged: use an older checkpoint", ErrorKind::kProtocol);
      tensors_.push_back(std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    io_error(fmt::format("checkpoint {}: malformed manifest: {}", dir_, e.what()), "the manifest is damaged: use an older checkpoint",
             ErrorKind::kProtocol);
  }
}

const TensorInfo* CheckpointReader::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void CheckpointReader::read_chunk(const TensorInfo& t, size_t index, float* out) const {
  const ChunkInfo& c = t.chunks[index];
  const std::string path = dir_ + "/" + c.file;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) sys_error("cannot open checkpoint file", path, errno);
  const size_t bytes = c.length * sizeof(float);
  size_t done = 0;
  auto* p = reinterpret_cast<char*>(out);
  while (done < bytes) {
    const ssize_t n = ::pread(fd, p + done, bytes - done, static_cast<off_t>(c.file_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : 0;
      ::close(fd);
      io_error(fmt::format("checkpoint {}: cannot read chunk {} of {} from {} (offset {}, {} bytes): {}", dir_, index,
                           t.name, c.file, c.file_offset, bytes, err ? errno_text(err) : "the file is truncated"),
               "the checkpoint is damaged: use an older one");
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  const uint64_t got = digest64(out, bytes);
  if (got != c.digest)
    io_error(fmt::format("checkpoint {}: digest mismatch in {} chunk {} of {} (elements {}..{}, file offset {}, {} bytes): "
                         "expected {}, got {}",
                         dir_, c.file, index, t.name, c.offset, c.offset + c.length, c.file_offset, bytes,
                         digest_hex(c.digest), digest_hex(got)),
             "the file was corrupted after it was written: use an older checkpoint", ErrorKind::kProtocol);
}

void CheckpointReader::read(const std::string& tensor, uint64_t offset, uint64_t count, float* out) const {
  read_runs(tensor, {ReadRun{offset, count, out}});
}

void CheckpointReader::read_runs(const std::string& tensor, std::vector<ReadRun> runs) const {
  const TensorInfo* t = find(tensor);
  if (!t)
    io_error(fmt::format("checkpoint {} has no tensor {}", dir_, tensor), "the checkpoint is of another model",
             ErrorKind::kInvalidArgument);
  std::erase_if(runs, [](const ReadRun& r) { return r.count == 0; });
  std::sort(runs.begin(), runs.end(), [](const ReadRun& x, const ReadRun& y) { return x.offset < y.offset; });
  for (size_t i = 0; i < runs.size(); ++i)
    if (runs[i].offset + runs[i].count > t->numel || (i > 0 && runs[i - 1].offset + runs[i - 1].count > runs[i].offset))
      io_error(fmt::format("checkpoint {}: elements {}..{} of {} are past its {} elements or overlap another range", dir_,
                           runs[i].offset, runs[i].offset + runs[i].count, tensor, t->numel),
               "the checkpoint is of another model", ErrorKind::kInvalidArgument);
  if (runs.empty()) return;
  // The first run that ends after `x`.
  auto first_after = [&](uint64_t x) {
    return std::upper_bound(runs.begin(), runs.end(), x, [](uint64_t v, const ReadRun& r) { return v < r.offset + r.count; });
  };
  // Copies the overlaps of one chunk row [lo, lo + n) (data at `src`) into the runs.
  auto scatter = [&](uint64_t lo, uint64_t n, const float* src) {
    for (auto it = first_after(lo); it != runs.end() && it->offset < lo + n; ++it) {
      const uint64_t a = std::max(lo, it->offset), b = std::min(lo + n, it->offset + it->count);
      std::memcpy(it->out + (a - it->offset), src + (a - lo), (b - a) * sizeof(float));
    }
  };
  auto touches = [&](uint64_t lo, uint64_t n) {
    auto it = first_after(lo);
    return it != runs.end() && it->offset < lo + n;
  };
  std::vector<float> tmp;
  for (size_t i = 0; i < t->chunks.size(); ++i) {
    const ChunkInfo& c = t->chunks[i];
    if (!touches(c.offset, c.end() - c.offset)) continue;
    bool needed = !c.strided();
    for (uint64_t row = 0; !needed && row < c.rows(); ++row) needed = touches(c.offset + row * c.stride, c.run);
    if (!needed) continue;
    if (!c.strided()) {
      auto it = first_after(c.offset);
      if (it->offset <= c.offset && c.offset + c.length <= it->offset + it->count) {
        read_chunk(*t, i, it->out + (c.offset - it->offset));  // whole chunk inside one run: straight into place
        continue;
      }
    }
    tmp.resize(c.length);
    read_chunk(*t, i, tmp.data());
    for (uint64_t row = 0; row < c.rows(); ++row)
      scatter(c.offset + row * c.row_stride(), c.row_length(), tmp.data() + row * c.row_length());
  }
}

std::vector<float> CheckpointReader::read_all(const std::string& tensor) const {
  const TensorInfo* t = find(tensor);
  std::vector<float> out(t ? t->numel : 0);
  read(tensor, 0, out.size(), out.data());
  return out;
}

std::vector<std::string> CheckpointReader::verify() const {
  std::vector<std::string> problems;
  std::vector<float> buf;
  for (const TensorInfo& t : tensors_)
    for (size_t i = 0; i < t.chunks.size(); ++i) {
      buf.resize(t.chunks[i].length);
      try {
        read_chunk(t, i, buf.data());
      } catch (const Error& e) {
        problems.push_back(e.message());
      }
    }
  return problems;
}

uint64_t CheckpointReader::total_bytes() const {
  uint64_t b = 0;
  for (const auto& t : tensors_) b += t.numel * sizeof(float);
  return b;
}

}  // namespace mics::io
