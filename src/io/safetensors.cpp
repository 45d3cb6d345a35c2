#include "io/safetensors.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/dtype.hpp"
#include "base/error.hpp"

namespace mics::io {

namespace {
[[noreturn]] void st_error(const std::string& message, const std::string& hint) {
  throw Error(ErrorKind::kIo, message, {.layer = "io", .where = "safetensors", .hint = hint});
}
}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafeTensorOut>& tensors, const std::string& dtype,
                       const std::map<std::string, std::string>& metadata) {
  if (dtype != "F32" && dtype != "BF16")
    throw Error(ErrorKind::kInvalidArgument, fmt::format("safetensors dtype {}", dtype),
                {.layer = "io", .where = "safetensors", .hint = "use F32 or BF16"});
  const size_t es = dtype == "F32" ? 4 : 2;
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t bytes = t.data.size() * es;
    header[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');  // align the data to 8 bytes
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) st_error(fmt::format("cannot create {}: {}", path, errno_text(errno)), "check the --out directory");
  const uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<uint16_t> half;
  for (const auto& t : tensors) {
    if (es == 4) {
      out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size() * 4));
    } else {
      half.resize(t.data.size());
      for (size_t i = 0; i < t.data.size(); ++i) half[i] = f32_to_bf16(t.data[i]);
      out.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(half.size() * 2));
    }
  }
  out.flush();
  if (!out) st_error(fmt::format("cannot write {}: {}", path, errno_text(errno)), "check free space in the --out directory");
}

std::map<std::string, SafeTensorIn> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) st_error(fmt::format("cannot open {}: {}", path, errno_text(errno)), "give a directory with model.safetensors");
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (!in || n > (1u << 30)) st_error(fmt::format("{}: not a safetensors file (header length {})", path, n), "the file is damaged");
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    st_error(fmt::format("{}: bad header: {}", path, e.what()), "the file is damaged");
  }
  const std::streamoff data_start = static_cast<std::streamoff>(8 + n);
  std::map<std::string, SafeTensorIn> out;
  std::vector<char> raw;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    SafeTensorIn t;
    t.dtype = it.value().at("dtype");
    t.shape = it.value().at("shape").get<std::vector<int64_t>>();
    const uint64_t b = it.value().at("data_offsets").at(0), e = it.value().at("data_offsets").at(1);
    const size_t es = t.dtype == "F32" ? 4 : (t.dtype == "BF16" || t.dtype == "F16") ? 2 : 0;
    if (es == 0) st_error(fmt::format("{}: tensor {} has dtype {}", path, it.key(), t.dtype), "export it as F32, BF16 or F16");
    raw.resize(e - b);
    in.seekg(data_start + static_cast<std::streamoff>(b));
    in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
    if (!in) st_error(fmt::format("{}: tensor {} is truncated", path, it.key()), "the file is damaged");
    t.data.resize(raw.size() / es);
    for (size_t i = 0; i < t.data.size(); ++i) {
      if (es == 4) {
        std::memcpy(&t.data[i], raw.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        t.data[i] = t.dtype == "BF16" ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
    out[it.key()] = std::move(t);
  }
  return out;
}

}  // namespace mics::io
