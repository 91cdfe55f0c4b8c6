// fuzz_idx.cpp: libFuzzer target over data::read_idx (the MNIST / Fashion-MNIST IDX reader, plain or gzipped:
// zlib's gzread reads both). The input is written to a scratch file, since the reader takes a path.
// Checked: no crash or sanitizer report; a refusal is an eng::Error of one line naming the file; an accepted file
// has 1..4 positive dims whose product is the payload size.
#include "data/idx.h"
#include "fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_scratch("input-idx3-ubyte.gz", data, size);
  fuzz::run_checked("idx", path, [&] {
    data::IdxArray a = data::read_idx(path);
    if (a.dims.empty() || a.dims.size() > 4) fuzz::fail("idx", "accepted a file with dims", std::to_string(a.dims.size()));
    size_t n = 1;
    for (int64_t d : a.dims) {
      if (d <= 0) fuzz::fail("idx", "accepted a dimension <= 0", std::to_string(d));
      n *= size_t(d);
    }
    if (n != a.bytes.size()) fuzz::fail("idx", "payload size does not match the dims", "");
  });
  return 0;
}
