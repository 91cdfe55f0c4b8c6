// fuzz_safetensors.cpp: libFuzzer target over eng::parse_safetensors (the parser behind load_safetensors).
//
// Build and run: see fuzz/README.md (`make fuzz`, then `make -C fuzz run FUZZ_TIME=240`).
// Properties checked on every input, beyond "no crash, no sanitizer report, no stray exception":
//   - a refusal is an eng::Error whose message is one line starting with the file name;
//   - an accepted file round-trips: serialize(parse(x)) parses to the same tensors (bitwise) and metadata,
//     and serializing that again gives the same bytes (the writer's output is a fixed point);
//   - what the writer wrote carries a checksum of every tensor, and the reader verified them (`checksummed`).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/io/safetensors.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_safetensors: %s: %s\n", what, detail.c_str());
  std::abort();
}

bool same_tensor(const eng::Tensor& a, const eng::Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape() || a.nbytes() != b.nbytes()) return false;
  return a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name = "fuzz-input";
  eng::SafetensorsFile parsed;
  try {
    parsed = eng::parse_safetensors(data, size, name);
  } catch (const eng::Error& e) {
    std::string msg = e.what();
    if (msg.rfind(name + ": ", 0) != 0) fail("error message does not start with the file name", msg);
    if (msg.find('\n') != std::string::npos) fail("error message spans several lines", msg);
    return 0;
  }

  std::vector<uint8_t> once, twice;
  eng::SafetensorsFile again;
  try {
    once = eng::serialize_safetensors(parsed.tensors, parsed.metadata, "fuzz-write");
    again = eng::parse_safetensors(once.data(), once.size(), "fuzz-reread");
    twice = eng::serialize_safetensors(again.tensors, again.metadata, "fuzz-write2");
  } catch (const eng::Error& e) {
    fail("an accepted file did not round-trip", e.what());
  }
  if (again.metadata != parsed.metadata) fail("round trip", "metadata differs");
  if (!again.checksummed) fail("round trip", "the writer's output carries no verified checksums");
  if (again.tensors.size() != parsed.tensors.size()) fail("round trip", "tensor count differs");
  for (const auto& [tname, t] : parsed.tensors) {
    auto it = again.tensors.find(tname);
    if (it == again.tensors.end() || !same_tensor(t, it->second)) fail("round trip", "tensor differs: " + tname);
  }
  if (once != twice) fail("round trip", "the writer's output is not a fixed point");
  return 0;
}
