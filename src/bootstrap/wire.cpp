// The store's wire format (see wire.hpp).
#include "bootstrap/wire.hpp"

namespace mics::bootstrap::wire {
namespace {

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

}  // namespace

Writer& Writer::u8(uint8_t v) {
  payload_.push_back(static_cast<char>(v));
  return *this;
}
Writer& Writer::u32(uint32_t v) {
  put_le(payload_, v, 4);
  return *this;
}
Writer& Writer::u64(uint64_t v) {
  put_le(payload_, v, 8);
  return *this;
}
Writer& Writer::str(std::string_view s) {
  u32(static_cast<uint32_t>(s.size()));
  payload_.append(s);
  return *this;
}

std::string Writer::frame() const {
  std::string out;
  out.reserve(kHeaderBytes + payload_.size());
  put_le(out, kMagic, 4);
  put_le(out, payload_.size(), 4);
  out += payload_;
  return out;
}

bool Reader::take(size_t n) {
  if (!ok_ || data_.size() - pos_ < n) {
    ok_ = false;
    return false;
  }
  return true;
}

uint8_t Reader::u8() {
  if (!take(1)) return 0;
  return static_cast<uint8_t>(data_[pos_++]);
}
uint32_t Reader::u32() {
  if (!take(4)) return 0;
  uint32_t v = static_cast<uint32_t>(get_le(data_.data() + pos_, 4));
  pos_ += 4;
  return v;
}
uint64_t Reader::u64() {
  if (!take(8)) return 0;
  uint64_t v = get_le(data_.data() + pos_, 8);
  pos_ += 8;
  return v;
}
std::string Reader::str() {
  uint32_t n = u32();
  if (!take(n)) return {};
  std::string s(data_.substr(pos_, n));
  pos_ += n;
  return s;
}

Header parse_header(const char* bytes) {
  return {static_cast<uint32_t>(get_le(bytes, 4)), static_cast<uint32_t>(get_le(bytes + 4, 4))};
}

const char* op_name(uint8_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kHello:
      return "HELLO";
    case Op::kSet:
      return "SET";
    case Op::kGet:
      return "GET";
    case Op::kAdd:
      return "ADD";
    case Op::kWait:
      return "WAIT";
    case Op::kMultiGet:
      return "MGET";
    case Op::kArrive:
      return "ARRIVE";
    case Op::kOk:
      return "OK";
    case Op::kValue:
      return "VALUE";
    case Op::kAbsent:
      return "ABSENT";
    case Op::kInt:
      return "INT";
    case Op::kMissing:
      return "MISSING";
    case Op::kValues:
      return "VALUES";
    case Op::kError:
      return "ERROR";
  }
  return "unknown";
}

}  // namespace mics::bootstrap::wire
