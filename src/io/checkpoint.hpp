#pragma once
// Sharded checkpoint files: the on-disk format, the commit protocol and the reader.
//
// A checkpoint is a directory ROOT/step-XXXXXXXX/ holding
//   rank-RRRRR.bin         one per writer rank: its chunks back to back (raw little-endian f32)
//   rank-RRRRR.index.json  that file's chunk list with digests (written after the .bin is fsynced)
//   manifest.json          the commit record, written last by one rank (commit_manifest)
// A checkpoint without manifest.json does not exist (an unfinished or failed save).
//
// Commit protocol: every writer pwrites its chunks in large pieces, fsyncs the file, writes
// its index to a temporary name, fsyncs, renames it and fsyncs the directory. Only when every
// writer reported success (the caller agrees on that), one rank gathers the indexes, checks
// that every tensor is covered exactly once, writes manifest.json.tmp, fsyncs it, renames it
// to manifest.json and fsyncs the directory. Deleting a checkpoint removes the manifest first.
//
// Manifest (JSON): {"format": "mics-checkpoint", "version": 1 or 2, "digest": "mics64",
//   "step": t, "training": {...}, "model": {...},          (opaque to this layer)
//   "files": [{"name", "bytes"}],
//   "tensors": [{"name", "dtype": "f32", "shape": [numel],
//                "chunks": [{"offset", "length", "file", "file_offset", "digest"[, "run", "stride"]}]}]}
// offset/length count elements of the tensor, file_offset bytes; digest is 16 hex digits.
// A chunk is contiguous (elements offset .. offset+length) unless it has "run" and "stride":
// then its `length` elements (back to back in the file, one digest) are length/run rows of
// `run` elements placed at offset + i*stride (i = 0, 1, ...). Strided chunks let a tensor-
// parallel rank write its column slice of a row-major matrix (every row's `run` columns) as
// one chunk instead of one chunk per row, so the manifest stays small for large models.
// Version 2 = a manifest with at least one strided chunk (version 1 readers refuse it
// instead of misreading it); a checkpoint without them is written as version 1. Every
// tensor's chunks tile it exactly: each element in exactly one chunk.
//
// Digest "mics64": a 64-bit non-cryptographic hash, four independent lanes over 8-byte words
// (lane = rotl(lane + w * K1, 29) * K2, each step a bijection in w and in the lane), lanes
// combined through a bijective 64-bit mixer. Strength: any change confined to one aligned
// 8-byte word (every single flipped bit or byte) is always detected; other corruption escapes
// with probability about 2^-64. It guards against media and software corruption, not against
// an adversary. Speed: several GB/s per core (two multiplies per 8 bytes).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace mics::io {

// A failed system call on a checkpoint file (kIo, layer "io"), with its errno: the trainer
// reports it per rank ("failed on rank 3: No space left on device").
class SystemError : public Error {
 public:
  SystemError(int sys_errno, std::string message, ErrorContext context)
      : Error(ErrorKind::kIo, std::move(message), std::move(context)), sys_errno_(sys_errno) {}
  int sys_errno() const { return sys_errno_; }

 private:
  int sys_errno_;
};

uint64_t digest64(const void* data, size_t bytes);
std::string digest_hex(uint64_t digest);

std::string step_dir_name(uint64_t step);         // "step-00000012"
std::string rank_file_name(int rank);             // "rank-00003.bin"
constexpr const char* kManifestName = "manifest.json";

// One contiguous range of a tensor as a writer holds it.
struct WriteChunk {
  std::string tensor;
  uint64_t numel = 0;   // the tensor's global length
  uint64_t offset = 0;  // first element of the range
  uint64_t length = 0;  // elements
  const float* data = nullptr;
  // Strided placement (see above): 0 = contiguous; else rows of `run` elements `stride` apart
  // (length a multiple of run, run < stride).
  uint64_t run = 0;
  uint64_t stride = 0;
};

struct WriteStats {
  uint64_t bytes = 0;
  double seconds = 0;
};

// Writes dir/<file> (the chunks back to back, large pwrites, fsync) and its index (tmp, fsync,
// rename, directory fsync). The directory must exist. Throws SystemError (kIo, layer "io")
// naming the file and the system error (ENOSPC, EACCES, ENOENT...).
// Test knob (base/knobs.hpp): MICS_DEBUG_CKPT_WRITE_DELAY_MS slows writes (64 KiB pieces, a
// sleep after each).
WriteStats write_shard_file(const std::string& dir, const std::string& file, const std::vector<WriteChunk>& chunks);

// Gathers the indexes of `files` in dir, checks coverage and writes the manifest by the commit
// protocol above. Throws mics::Error naming the file or tensor at fault.
void commit_manifest(const std::string& dir, const std::vector<std::string>& files, uint64_t step,
                     const nlohmann::json& training, const nlohmann::json& model);

// Removes a checkpoint directory: the manifest first (so that a half-deleted one is not a
// checkpoint), then the rest. Best effort; returns false (and leaves what it could not
// remove) on failure.
bool remove_checkpoint(const std::string& dir);

// Step directories under root (committed or not), newest (highest step) first.
struct StepDir {
  uint64_t step = 0;
  std::string path;
  bool committed = false;  // manifest.json present
};
std::vector<StepDir> list_checkpoints(const std::string& root);

struct ChunkInfo {
  uint64_t offset = 0, length = 0;  // elements
  std::string file;
  uint64_t file_offset = 0;  // bytes
  uint64_t digest = 0;
  uint64_t run = 0, stride = 0;  // strided placement; 0: contiguous
  bool strided() const { return run != 0 && run != length; }
  uint64_t rows() const { return strided() ? length / run : 1; }
  uint64_t row_length() const { return strided() ? run : length; }
  uint64_t row_stride() const { return strided() ? stride : length; }
  uint64_t end() const { return offset + (rows() - 1) * row_stride() + row_length(); }  // past the last element
};

// Whether chunks tile [0, numel) exactly; empty when they do, else what is wrong (a gap or an
// overlap at an element). Sorts the chunks by offset. A k-way merge of the chunks' rows:
// O(rows log chunks) time, O(chunks) memory.
std::string check_tiling(std::vector<ChunkInfo>& chunks, uint64_t numel);

// A destination of a batched read: elements [offset, offset + count) of a tensor into out.
struct ReadRun {
  uint64_t offset = 0, count = 0;
  float* out = nullptr;
};

struct TensorInfo {
  std::string name;
  std::string dtype = "f32";
  uint64_t numel = 0;
  std::vector<ChunkInfo> chunks;  // sorted by offset, covering [0, numel) exactly
};

// Opens a checkpoint: parses the manifest and checks its structure (every tensor covered
// exactly once, every file present and long enough). Throws mics::Error (kIo or kProtocol,
// layer "io") naming the checkpoint and what is wrong; "no manifest" reads as "not a
// committed checkpoint".
class CheckpointReader {
 public:
  explicit CheckpointReader(std::string dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& manifest() const { return manifest_; }
  uint64_t step() const { return step_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // null when absent

  // Elements [offset, offset + count) of a tensor. Every chunk that overlaps is read whole
  // (pread) and its digest checked; a mismatch throws naming the file, chunk and offsets.
  void read(const std::string& tensor, uint64_t offset, uint64_t count, float* out) const;
  // Several ranges of one tensor (non-overlapping, any order): every chunk that overlaps any of
  // them is read once and its digest checked, so a strided read (a tensor-parallel column
  // slice, thousands of short runs) costs one pass over the chunks it touches.
  void read_runs(const std::string& tensor, std::vector<ReadRun> runs) const;
  // The whole tensor.
  std::vector<float> read_all(const std::string& tensor) const;

  // Reads every chunk and checks its digest; returns the problems found (empty: verified).
  std::vector<std::string> verify() const;
  uint64_t total_bytes() const;

 private:
  void read_chunk(const TensorInfo& t, size_t index, float* out) const;
  std::string dir_;
  nlohmann::json manifest_;
  uint64_t step_ = 0;
  std::vector<TensorInfo> tensors_;
};

}  // namespace mics::io
