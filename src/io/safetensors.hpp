#pragma once
// safetensors files (the Hugging Face format): an 8-byte little-endian header length, a JSON
// header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then
// the tensors' bytes (row-major, little-endian). Written here in F32 or BF16; read from F32,
// BF16 or F16 into fp32.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mics::io {

struct SafeTensorOut {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // fp32 values, converted on write
};

// dtype: "F32" or "BF16". Throws mics::Error (kIo, layer "io") naming the file.
void write_safetensors(const std::string& path, const std::vector<SafeTensorOut>& tensors, const std::string& dtype,
                       const std::map<std::string, std::string>& metadata = {});

struct SafeTensorIn {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<float> data;
};
std::map<std::string, SafeTensorIn> read_safetensors(const std::string& path);

}  // namespace mics::io
