// make_seeds.cpp: writes the seed corpus for fuzz_safetensors into the directory given as argv[1]:
// valid files from our own writer (every dtype, views, empty and 0-d tensors, metadata) plus hand-made
// near misses (each a single defect), so that the fuzzer starts next to the interesting branches.
// Built and run by fuzz/Makefile.
#include <cstdio>
#include <string>
#include <vector>

#include "engine/io/safetensors.h"

using eng::DType;
using eng::Tensor;

namespace {

void put(const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  std::string path = dir + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
}

// 8-byte length + header text + `buffer_bytes` filler bytes.
std::vector<uint8_t> image(const std::string& header, size_t buffer_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  s += header;
  s.append(buffer_bytes, '\x3f');
  return std::vector<uint8_t>(s.begin(), s.end());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); i++) v[i] = float(i) - 5.5f;
  Tensor base = Tensor::from_vector(v, {3, 4});

  put(dir, "valid_all_dtypes", eng::serialize_safetensors(
                                   {{"f32", base},
                                    {"f64", Tensor::from_vector(std::vector<double>{1, -2, 3}, {3})},
                                    {"bf16", Tensor::from_vector(v, {2, 6}, DType::BF16)},
                                    {"i32", Tensor::from_vector(std::vector<int32_t>{-1, 2}, {2, 1})},
                                    {"i64", Tensor::from_vector(std::vector<int64_t>{1LL << 40}, {1, 1, 1})}},
                                   {{"format", "moce-checkpoint-v1"}, {"step", "7"}, {"config", "{\"lr\": 0.1}"}}));
  put(dir, "valid_views", eng::serialize_safetensors({{"t", base.transpose(0, 1)}, {"s", base.slice(1, 0, 4, 3)}}));
  put(dir, "valid_empty_scalar",
      eng::serialize_safetensors({{"empty", Tensor::empty({0, 3})}, {"scalar", Tensor::from_vector(v, {12}).select(0, 1)}}));
  put(dir, "valid_no_tensors", eng::serialize_safetensors({}, {{"only", "metadata"}}));
  put(dir, "valid_nothing", eng::serialize_safetensors({}));

  const std::string e = "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  put(dir, "bad_f16", image("{\"x\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4));
  put(dir, "bad_overlap", image("{\"a\":" + e + ",\"b\":" + e + "}", 8));
  put(dir, "bad_gap", image("{\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8));
  put(dir, "bad_trailing", image("{\"a\":" + e + "}", 12));
  put(dir, "bad_shape", image("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1, 4294967296],\"data_offsets\":[0,8]}}", 8));
  put(dir, "bad_metadata", image("{\"__metadata__\":{\"k\":1},\"a\":" + e + "}", 8));
  put(dir, "bad_types", image("{\"a\":{\"dtype\":1,\"shape\":{},\"data_offsets\":[0.5,\"8\"]}}", 8));
  put(dir, "bad_length", {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{', '}'});
  // The checksums: one flipped data bit, one checksum that is not hex, one for a tensor the file lacks.
  std::vector<uint8_t> flipped = eng::serialize_safetensors({{"f32", base}});
  flipped.back() ^= 0x01;
  put(dir, "bad_checksum_damaged", flipped);
  put(dir, "bad_checksum_text", image("{\"__metadata__\":{\"checksums\":\"{\\\"a\\\":\\\"zz\\\"}\"},\"a\":" + e + "}", 8));
  put(dir, "bad_checksum_names",
      image("{\"__metadata__\":{\"checksums\":\"{\\\"b\\\":\\\"00000000\\\"}\"},\"a\":" + e + "}", 8));
  std::printf("make_seeds: wrote 16 files to %s\n", dir.c_str());
  return 0;
}
