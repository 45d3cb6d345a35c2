#pragma once
// The byte-level tokenizer of `mics data prepare`: each byte of the text is one token id
// 0..255 (vocabulary 256). decode turns ids back into printable text for samples.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mics::io {

constexpr int kByteVocab = 256;

std::vector<uint32_t> byte_encode(std::string_view text);

// Ids to text: printable ASCII as it is, a backslash as "\\", newline and tab as "\n" and
// "\t" (kept as they are with keep_newlines), other bytes as "\xNN", ids >= 256 as "<id>".
std::string byte_decode(std::span<const int32_t> ids, bool keep_newlines = false);
std::string byte_decode(std::span<const uint32_t> ids, bool keep_newlines = false);

}  // namespace mics::io
