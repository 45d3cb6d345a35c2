#pragma once
// The store's wire format (see store.hpp): frames of u32 magic | u32 length | payload, and
// inside a payload an opcode byte followed by fields. Integers are little-endian; a string
// is u32 length | bytes.
//
//   request                                    reply
//   HELLO  u32 version, str token              OK | ERROR str
//   SET    str key, str value                  OK
//   GET    str key                             VALUE str | ABSENT
//   ADD    str key, i64 delta                  INT i64         (ERROR if not an integer)
//   WAIT   i64 timeout_ms, u32 n, str key * n  OK | MISSING u64 total, u32 n, str key * n
//   MGET   u32 n, str key * n                  VALUES u32 n, (u8 present, str value) * n
//   ARRIVE i64 timeout_ms, i64 count,          OK | MISSING (as WAIT)  (ERROR past count)
//          str counter, str done, str marker
//
// WAIT answers OK once every key exists, or MISSING (the keys still absent, at most
// kMaxListedMissing of them) when timeout_ms passes first; timeout 0 is a probe.
// ARRIVE is a barrier in one round trip: it sets marker (unless empty), adds 1 to counter, sets
// done when the counter reaches count, then waits for done like WAIT. Being one request, no
// caller is between its arrival and its wait when the last one arrives, so the host of the
// store may exit as soon as its own barrier returns: every reply is already queued.
#include <cstdint>
#include <string>
#include <string_view>

namespace mics::bootstrap::wire {

inline constexpr uint32_t kMagic = 0x4d494353;  // "MICS"
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderBytes = 8;
inline constexpr uint32_t kMaxFrameBytes = 64u << 20;
inline constexpr uint32_t kMaxListedMissing = 1024;

enum class Op : uint8_t {
  kHello = 1,
  kSet = 2,
  kGet = 3,
  kAdd = 4,
  kWait = 5,
  kMultiGet = 6,
  kArrive = 7,
  // replies
  kOk = 0x80,
  kValue = 0x81,
  kAbsent = 0x82,
  kInt = 0x83,
  kMissing = 0x84,
  kValues = 0x85,
  kError = 0xff,
};

class Writer {
 public:
  explicit Writer(Op op) { u8(static_cast<uint8_t>(op)); }
  Writer& u8(uint8_t v);
  Writer& u32(uint32_t v);
  Writer& u64(uint64_t v);
  Writer& i64(int64_t v) { return u64(static_cast<uint64_t>(v)); }
  Writer& str(std::string_view s);
  // The payload with the frame header in front.
  std::string frame() const;

 private:
  std::string payload_;
};

// Reads fields of a payload; any read past the end marks the reader failed and returns zero
// values, so parsing code checks ok() once at the end.
class Reader {
 public:
  explicit Reader(std::string_view payload) : data_(payload) {}
  uint8_t u8();
  uint32_t u32();
  uint64_t u64();
  int64_t i64() { return static_cast<int64_t>(u64()); }
  std::string str();
  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == data_.size(); }
  size_t remaining() const { return data_.size() - pos_; }

 private:
  bool take(size_t n);
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

struct Header {
  uint32_t magic;
  uint32_t length;
};
Header parse_header(const char* bytes);  // kHeaderBytes bytes
const char* op_name(uint8_t op);

}  // namespace mics::bootstrap::wire
