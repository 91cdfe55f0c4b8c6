// idx.cpp: IDX reading through zlib (gzread also reads uncompressed files transparently).
#include "data/idx.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <memory>

#include "engine/error.h"

namespace data {

IdxArray read_idx(const std::string& path) {
  struct stat st;
  ENG_CHECK(::stat(path.c_str(), &st) == 0, "{}: no such file", path);
  std::unique_ptr<gzFile_s, int (*)(gzFile)> f(gzopen(path.c_str(), "rb"), gzclose);
  ENG_CHECK(f != nullptr, "{}: cannot open", path);
  auto read_exact = [&](void* dst, size_t n, const char* what) {
    int got = gzread(f.get(), dst, unsigned(n));
    ENG_CHECK(got == int(n), "{}: truncated while reading {} ({} of {} bytes)", path, what, std::max(got, 0), n);
  };
  uint8_t magic[4];
  read_exact(magic, 4, "the magic number");
  ENG_CHECK(magic[0] == 0 && magic[1] == 0, "{}: not an IDX file (bad magic)", path);
  ENG_CHECK(magic[2] == 0x08, "{}: IDX element type 0x{:02x} not supported (only unsigned bytes, 0x08)", path, magic[2]);
  int nd = magic[3];
  ENG_CHECK(nd >= 1 && nd <= 4, "{}: IDX with {} dims not supported", path, nd);
  IdxArray a;
  int64_t n = 1;
  for (int i = 0; i < nd; i++) {
    uint8_t b[4];
    read_exact(b, 4, "the dimensions");
    int64_t d = (int64_t(b[0]) << 24) | (int64_t(b[1]) << 16) | (int64_t(b[2]) << 8) | b[3];
    ENG_CHECK(d > 0 && d < (1 << 28), "{}: implausible dimension {}", path, d);
    a.dims.push_back(d);
    // Checked at each step: four dimensions under 2^28 can overflow int64 (found by fuzz/fuzz_idx).
    ENG_CHECK(n <= ((int64_t(1) << 32) - 1) / d, "{}: dimensions {} hold too many elements (at most 2^32 - 1)", path,
              eng::shape_str(a.dims));
    n *= d;
  }
  // Read in pieces, the buffer growing with what arrives: a header that claims 4 GB in a small file costs no more
  // memory than the file holds.
  constexpr size_t kPiece = size_t(1) << 24;
  for (size_t done = 0; done < size_t(n);) {
    const size_t want = std::min(kPiece, size_t(n) - done);
    a.bytes.resize(done + want);
    const int got = gzread(f.get(), a.bytes.data() + done, unsigned(want));
    ENG_CHECK(got == int(want), "{}: truncated while reading the data ({} of {} bytes)", path, done + size_t(std::max(got, 0)),
              n);
    done += want;
  }
  return a;
}

std::string fashion_mnist_dir() {
  const char* env = std::getenv("FASHION_MNIST_DIR");
  std::string dir = env ? env : "/usr/share/datasets/fashion-mnist";
  struct stat st;
  return ::stat((dir + "/train-images-idx3-ubyte.gz").c_str(), &st) == 0 ? dir : "";
}

LabelledImages load_mnist_split(const std::string& dir, const std::string& split, int64_t limit) {
  IdxArray im = read_idx(dir + "/" + split + "-images-idx3-ubyte.gz");
  IdxArray lb = read_idx(dir + "/" + split + "-labels-idx1-ubyte.gz");
  ENG_CHECK(im.dims.size() == 3, "{}/{}-images: expected 3 dims, got {}", dir, split, im.dims.size());
  ENG_CHECK(lb.dims.size() == 1 && lb.dims[0] == im.dims[0], "{}/{}: {} labels for {} images", dir, split,
            lb.dims.empty() ? 0 : lb.dims[0], im.dims[0]);
  int64_t n = limit > 0 ? std::min(limit, im.dims[0]) : im.dims[0];
  int64_t h = im.dims[1], w = im.dims[2];
  LabelledImages out;
  out.images = eng::Tensor::empty({n, 1, h, w});
  float* p = out.images.data<float>();
  for (int64_t i = 0; i < n * h * w; i++) p[i] = float(im.bytes[size_t(i)]) / 255.0f;
  out.labels = eng::Tensor::empty({n}, eng::DType::I64);
  int64_t* l = out.labels.data<int64_t>();
  for (int64_t i = 0; i < n; i++) {
    ENG_CHECK(lb.bytes[size_t(i)] < 10, "{}/{}-labels: label {} at index {} is out of range", dir, split,
              int(lb.bytes[size_t(i)]), i);
    l[i] = lb.bytes[size_t(i)];
  }
  return out;
}

}  // namespace data
