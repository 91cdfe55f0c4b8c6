// safetensors.h: reading and writing the safetensors format (weights, checkpoints, exports).
//
// Layout of a file: an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"key": "value", ...},
//    "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
// padded with spaces, then the data buffer; offsets are relative to the buffer's start, the data of
// every tensor is row-major little-endian, and the tensors cover the buffer exactly (no gaps, no overlap).
// This engine reads and writes the dtypes F32, F64, BF16, I32 and I64.
//
// Reading validates everything and fails with one eng::Error line naming the file and the problem;
// writing goes to `<path>.tmp`, is flushed to disk and renamed, so an existing file is never half-replaced.
//
// Checksums: the writer stores the CRC-32 (zlib's) of every tensor's bytes in __metadata__ under "checksums", a
// JSON object {tensor name: 8 lower-case hex digits}; the reader verifies each one and refuses a damaged tensor by
// name ("<file>: tensor 'x' is damaged (checksum ... != stored ...)"). Files without the key (other writers, files
// older than the checksums) load unverified, with a one-line note on stderr once per file (load_safetensors).
// The key is the format's, not the caller's: the reader takes it out of `metadata`, the writer refuses it there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace eng {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // contiguous CPU tensors
  std::map<std::string, std::string> metadata;  // without the checksums key
  bool checksummed = false;  // the file held a checksum of every tensor, and each one matched
};

constexpr const char* kSafetensorsChecksumsKey = "checksums";

// A header longer than this is refused as absurd before anything is allocated (the reference
// implementation uses the same limit).
constexpr uint64_t kSafetensorsMaxHeaderBytes = uint64_t(100) << 20;

// "F32", "F64", "BF16", "I32", "I64".
const char* safetensors_dtype_name(DType dtype);

// Writes the tensors (sorted by name, packed in that order) and the metadata. Tensors may be views or
// live on another device: they are copied to contiguous CPU memory first. Atomic: see the file comment.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The same bytes save_safetensors writes, in memory.
std::vector<uint8_t> serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                           const std::map<std::string, std::string>& metadata = {},
                                           const std::string& name_for_errors = "<memory>");

// Reads a file; tensor data is read straight into the tensors (the file is not held in memory twice).
SafetensorsFile load_safetensors(const std::string& path);

// Parses a whole file image held in memory; `name_for_errors` starts every error message.
SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& name_for_errors);

}  // namespace eng
