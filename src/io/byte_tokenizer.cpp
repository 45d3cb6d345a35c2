// The byte-level tokenizer: bytes are token ids.
#include "io/byte_tokenizer.hpp"

#include <fmt/format.h>

namespace mics::io {
namespace {

void append_token(std::string& out, int64_t id, bool keep_newlines) {
  if (id < 0 || id >= kByteVocab) {
    out += fmt::format("<{}>", id);
    return;
  }
  const auto c = static_cast<unsigned char>(id);
  if (c == '\\') {
    out += "\\\\";
  } else if (c == '\n') {
    out += keep_newlines ? "\n" : "\\n";
  } else if (c == '\t') {
    out += keep_newlines ? "\t" : "\\t";
  } else if (c >= 0x20 && c < 0x7f) {
    out += static_cast<char>(c);
  } else {
    out += fmt::format("\\x{:02x}", c);
  }
}

}  // namespace

std::vector<uint32_t> byte_encode(std::string_view text) {
  std::vector<uint32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string byte_decode(std::span<const int32_t> ids, bool keep_newlines) {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) append_token(out, id, keep_newlines);
  return out;
}

std::string byte_decode(std::span<const uint32_t> ids, bool keep_newlines) {
  std::string out;
  out.reserve(ids.size());
  for (uint32_t id : ids) append_token(out, id, keep_newlines);
  return out;
}

}  // namespace mics::io
