// image.cpp: stb_image / stb_image_write behind the data::Image API. This file holds the only
// STB_IMAGE_IMPLEMENTATION and STB_IMAGE_WRITE_IMPLEMENTATION of the project.
#include "data/image.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "engine/io/atomic_file.h"

// stb is third-party code: keep its warnings out of ours, and compile only the formats we read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STBI_NO_STDIO  // we read files ourselves, for error messages that name the OS reason
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
// Only the PNG writer is used: stb's JPEG writer left-shifts negative ints, which UBSan (SANITIZE=1) traps.
#define STBI_WRITE_NO_STDIO
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace data {

namespace {

// 2^26 pixels (8192 x 8192): far above any training image, and 192 MB of RGB at most.
constexpr int64_t kMaxImagePixels = int64_t(1) << 26;

// What the first bytes say the file is. Only these go on to stb: its other decoders (GIF, TGA, PSD, HDR, PIC) are
// not needed for data sets and are not covered by the checks below or by fuzz/fuzz_image's findings.
const char* sniff_format(const uint8_t* b, size_t n) {
  if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return "JPEG";
  if (n >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return "PNG";
  if (n >= 2 && b[0] == 'B' && b[1] == 'M') return "BMP";
  if (n >= 2 && b[0] == 'P' && (b[1] == '5' || b[1] == '6')) return "PPM/PGM";
  if (n >= 2 && b[0] == 'P' && (b[1] == '2' || b[1] == '3')) return "ASCII PPM/PGM";
  return nullptr;
}

// stb_image 2.27 (Debian's libstb) builds a Huffman table from a DHT segment without checking that its 16 code
// counts sum to at most 256, and writes past its 257-entry size table on one that does (found by fuzz/fuzz_image;
// stb 2.28 refuses such a table). So every DHT table of a JPEG is checked here first, walking the segments by their
// lengths as stb does; false = a table with more than 256 codes.
bool jpeg_huffman_tables_fit(const uint8_t* b, size_t n) {
  size_t i = 2;  // after SOI
  while (i + 1 < n) {
    if (b[i] != 0xFF || b[i + 1] == 0xFF) {  // entropy-coded data, or fill bytes before a marker
      i++;
      continue;
    }
    const uint8_t m = b[i + 1];
    if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) {  // stuffed 0xFF, TEM, SOI, RSTn: no length
      i += 2;
      continue;
    }
    if (m == 0xD9 || i + 3 >= n) break;  // EOI, or no room for a length: stb reports what it makes of the rest
    const size_t len = size_t(b[i + 2]) << 8 | b[i + 3];
    if (m == 0xC4) {
      // As stb: tables are read while the segment's length says bytes remain, even when the last table runs past
      // the segment's end (stb refuses that afterwards, but has built the table by then); bytes past the file read 0.
      for (size_t p = i + 4; p < i + 2 + len && p + 1 < n;) {
        size_t codes = 0;
        for (size_t k = p + 1; k < p + 17 && k < n; k++) codes += b[k];
        if (codes > 256) return false;
        p += 17 + codes;
      }
    }
    i += 2 + len;
  }
  return true;
}

// stb_image 2.27's binary PPM/PGM reader (found by fuzz/fuzz_image): a 16-bit PGM is expanded to RGB as if it had
// 8-bit samples and then read as 16-bit, past the end of its buffer; a file shorter than its header says decodes
// from uninitialised memory; a header number of many digits overflows an int. So the header is read here first,
// exactly as stb reads it, and such files are refused; "" = stb may decode it.
std::string pnm_header_problem(const uint8_t* b, size_t n) {
  size_t i = 2;  // after "P5" / "P6"
  auto get8 = [&]() -> char { return i < n ? char(b[i++]) : 0; };  // stb reads 0 past the end
  auto at_eof = [&] { return i >= n; };
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; };
  char c = get8();
  auto skip_whitespace = [&] {
    for (;;) {
      while (!at_eof() && space(c)) c = get8();
      if (at_eof() || c != '#') break;
      while (!at_eof() && c != '\n' && c != '\r') c = get8();
    }
  };
  bool too_long = false;
  auto integer = [&] {
    int64_t v = 0;
    while (!at_eof() && c >= '0' && c <= '9') {
      v = v * 10 + (c - '0');
      if (v > (int64_t(1) << 24)) too_long = true, v = int64_t(1) << 24;
      c = get8();
    }
    return v;
  };
  skip_whitespace();
  const int64_t w = integer();
  skip_whitespace();
  const int64_t h = integer();
  skip_whitespace();
  const int64_t maxv = integer();
  const int64_t channels = b[1] == '6' ? 3 : 1;
  if (too_long) return "a header number above 2^24";
  if (w <= 0 || h <= 0) return fmt::format("the header gives {} x {} pixels", w, h);
  if (maxv <= 0 || maxv > 65535) return fmt::format("maximum sample value {}, not 1..65535", maxv);
  if (maxv > 255 && channels == 1) return "a 16-bit PGM, which stb_image 2.27 cannot read";
  const int64_t need = w * h * channels * (maxv > 255 ? 2 : 1);
  if (int64_t(n - std::min(i, n)) < need)
    return fmt::format("{} x {} pixels need {} bytes of samples, the file holds {}", w, h, need, n - std::min(i, n));
  return "";
}

// An uncompressed BMP shorter than its rows: stb_image 2.27 reads zeros past the end and returns a picture, so a
// 245-byte file claiming 28 x 2.4M pixels decoded to 200 MB of black (found by fuzz/fuzz_image). "" = let stb try.
std::string bmp_size_problem(const uint8_t* b, size_t n) {
  auto le = [&](size_t at, int bytes) -> int64_t {
    if (at + size_t(bytes) > n) return -1;
    uint32_t v = 0;
    for (int k = bytes - 1; k >= 0; k--) v = v << 8 | b[at + size_t(k)];
    return bytes == 4 ? int64_t(int32_t(v)) : int64_t(v);
  };
  const int64_t offset = le(10, 4), header = le(14, 4);
  if (offset < 0 || header < 12) return "";  // stb refuses these itself
  const bool os2 = header == 12;
  const int64_t w = os2 ? le(18, 2) : le(18, 4), h = os2 ? le(20, 2) : le(22, 4), bpp = os2 ? le(24, 2) : le(28, 2);
  const int64_t compression = os2 ? 0 : le(30, 4);
  if (w <= 0 || h == 0 || h == INT32_MIN || bpp <= 0 || (compression != 0 && compression != 3)) return "";
  // rows x row can pass 2^63 (found by fuzz/fuzz_image): compared by division; the figure printed in double.
  const int64_t row = (w * bpp + 31) / 32 * 4, rows = std::abs(h);
  const int64_t have = int64_t(n) - std::min<int64_t>(offset, int64_t(n));
  if (rows > have / row)
    return fmt::format("{} x {} pixels of {} bits need {:.0f} bytes of rows, the file holds {}", w, rows, bpp,
                       double(rows) * double(row), have);
  return "";
}

// stb_image 2.27 copies a zero-length IDAT chunk's 0 bytes into its data buffer before it has allocated one
// (memcpy to NULL: undefined behaviour; found by fuzz/fuzz_image). Such a chunk carries nothing, so the file without
// it is the same picture: the bytes without every zero-length IDAT, or empty when there is none (the usual case).
std::vector<uint8_t> png_without_empty_idat(const uint8_t* b, size_t n) {
  auto be32 = [](const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; };
  std::vector<uint8_t> out;
  size_t pos = 8, copied = 0;  // after the signature; chunks are length, type, data, CRC
  while (pos + 12 <= n) {
    const uint32_t length = be32(b + pos);
    if (length > n - pos - 12) break;  // a chunk cut short: stb reports it
    if (length == 0 && std::memcmp(b + pos + 4, "IDAT", 4) == 0) {
      out.insert(out.end(), b + copied, b + pos);
      copied = pos + 12;
    }
    pos += 12 + size_t(length);
  }
  if (copied == 0) return {};
  out.insert(out.end(), b + copied, b + n);
  return out;
}

// stb's reason can quote the file's own bytes ("<4 bytes> PNG chunk not known"): escaped, so that the message
// stays one printable line (found by fuzz/fuzz_image).
std::string printable(const char* text) {
  std::string out;
  for (const char* c = text; *c; c++) {
    const unsigned char u = static_cast<unsigned char>(*c);
    if (u >= 0x20 && u < 0x7F) out.push_back(*c);
    else out += fmt::format("\\x{:02x}", u);
  }
  return out;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  ENG_CHECK(f != nullptr, "{}: cannot open ({})", path, std::strerror(errno));
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  for (;;) {
    size_t got = std::fread(chunk, 1, sizeof chunk, f.get());
    bytes.insert(bytes.end(), chunk, chunk + got);
    if (got < sizeof chunk) break;
  }
  ENG_CHECK(!std::ferror(f.get()), "{}: read error ({})", path, std::strerror(errno));
  return bytes;
}

}  // namespace

Image decode_image_bytes(const uint8_t* bytes, size_t size, const std::string& name) {
  if (size == 0) throw CorruptImage(fmt::format("{}: empty file (0 bytes), not an image", name));
  ENG_CHECK(size <= size_t(INT32_MAX), "{}: {} bytes is too large for stb_image", name, size);
  const char* format = sniff_format(bytes, size);
  if (format == nullptr)
    throw CorruptImage(fmt::format("{}: not an image: the first bytes match none of JPEG, PNG, PPM/PGM, BMP", name));
  std::vector<uint8_t> png_copy;
  if (std::strcmp(format, "PNG") == 0 && !(png_copy = png_without_empty_idat(bytes, size)).empty()) {
    bytes = png_copy.data();
    size = png_copy.size();
  }
  if (std::strcmp(format, "JPEG") == 0 && !jpeg_huffman_tables_fit(bytes, size))
    throw CorruptImage(fmt::format("{}: cannot decode JPEG data ({} bytes; a Huffman table with more than 256 codes): "
                                   "truncated or corrupt file", name, size));
  if (std::strcmp(format, "PPM/PGM") == 0)
    if (const std::string problem = pnm_header_problem(bytes, size); !problem.empty())
      throw CorruptImage(fmt::format("{}: cannot decode PPM/PGM data ({} bytes; {}): truncated or corrupt file", name,
                                     size, problem));
  if (std::strcmp(format, "BMP") == 0)
    if (const std::string problem = bmp_size_problem(bytes, size); !problem.empty())
      throw CorruptImage(fmt::format("{}: cannot decode BMP data ({} bytes; {}): truncated or corrupt file", name, size,
                                     problem));
  // The size from the header first: a small file may claim any size (a PNG or JPEG compresses a blank picture to
  // almost nothing), and decoding allocates it all.
  if (int iw = 0, ih = 0, ic = 0; stbi_info_from_memory(bytes, int(size), &iw, &ih, &ic) &&
                                  int64_t(iw) * int64_t(ih) > kMaxImagePixels)
    throw CorruptImage(fmt::format("{}: {} x {} pixels is larger than the decoder takes ({} pixels at most): corrupt "
                                   "header or not a data-set image", name, iw, ih, kMaxImagePixels));
  int w = 0, h = 0, channels_in_file = 0;
  // Asking for 3 components makes stb expand gray to RGB and drop alpha.
  stbi_uc* px = stbi_load_from_memory(bytes, int(size), &w, &h, &channels_in_file, 3);
  if (px == nullptr) {
    const char* reason = stbi_failure_reason();
    throw CorruptImage(fmt::format("{}: cannot decode {} data ({} bytes; stb_image: {}): truncated or corrupt file",
                                   name, format, size, printable(reason ? reason : "unknown error")));
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> owned(px, stbi_image_free);
  // stb returns a 0 x 0 "image" for a PPM/PGM header whose sizes are missing or 0 (found by fuzz/fuzz_image).
  if (w <= 0 || h <= 0)
    throw CorruptImage(fmt::format("{}: cannot decode {} data ({} bytes): the header gives {} x {} pixels", name,
                                   format, size, w, h));
  Image img;
  img.height = h;
  img.width = w;
  img.pixels.assign(px, px + size_t(h) * size_t(w) * 3);
  return img;
}

Image decode_image(const std::string& path) {
  std::vector<uint8_t> bytes = read_file(path);
  return decode_image_bytes(bytes.data(), bytes.size(), path);
}

eng::Tensor image_to_tensor(const Image& image) {
  const int64_t h = image.height, w = image.width, hw = h * w;
  ENG_CHECK(int64_t(image.pixels.size()) == hw * 3, "image_to_tensor: {}x{} image holds {} bytes, expected {}", h, w,
            image.pixels.size(), hw * 3);
  eng::Tensor t = eng::Tensor::empty({3, h, w});
  float* out = t.data<float>();
  const uint8_t* in = image.pixels.data();
  for (int64_t p = 0; p < hw; p++)
    for (int64_t c = 0; c < 3; c++) out[c * hw + p] = float(in[p * 3 + c]) / 255.0f;
  return t;
}

Image tensor_to_image(const eng::Tensor& chw, const std::string& what) {
  ENG_CHECK(chw.defined(), "{}: undefined tensor, cannot make an image", what);
  ENG_CHECK(is_floating(chw.dtype()), "{}: expected a floating tensor with values in [0, 1], got {}", what, chw.str());
  int64_t c = 0, h = 0, w = 0;
  if (chw.dim() == 2) {
    c = 1, h = chw.size(0), w = chw.size(1);
  } else {
    ENG_CHECK(chw.dim() == 3 && (chw.size(0) == 3 || chw.size(0) == 1),
              "{}: expected shape [3, H, W], [1, H, W] or [H, W], got {}", what, eng::shape_str(chw.shape()));
    c = chw.size(0), h = chw.size(1), w = chw.size(2);
  }
  ENG_CHECK(h > 0 && w > 0, "{}: empty image {}", what, eng::shape_str(chw.shape()));
  std::vector<float> v = chw.to_vector<float>();  // any device, layout and floating dtype
  Image img;
  img.height = h;
  img.width = w;
  img.pixels.resize(size_t(h * w * 3));
  const int64_t hw = h * w;
  for (int64_t p = 0; p < hw; p++) {
    for (int64_t k = 0; k < 3; k++) {
      float x = v[size_t((c == 1 ? 0 : k) * hw + p)];
      ENG_CHECK(std::isfinite(x), "{}: non-finite value {} at channel {} pixel ({}, {})", what, x, k, p / w, p % w);
      x = std::min(std::max(x, 0.0f), 1.0f);
      img.pixels[size_t(p * 3 + k)] = uint8_t(std::lround(x * 255.0f));
    }
  }
  return img;
}

namespace {

void check_writable_image(const std::string& path, const Image& image) {
  ENG_CHECK(image.height > 0 && image.width > 0 && int64_t(image.pixels.size()) == image.height * image.width * 3,
            "{}: cannot write a {}x{} image holding {} bytes", path, image.height, image.width, image.pixels.size());
  ENG_CHECK(image.height <= 65535 && image.width <= 65535, "{}: image {}x{} too large to write", path, image.height,
            image.width);
}

void append_bytes(void* ctx, void* d, int n) {
  auto* out = static_cast<std::vector<uint8_t>*>(ctx);
  out->insert(out->end(), static_cast<uint8_t*>(d), static_cast<uint8_t*>(d) + n);
}

}  // namespace

void write_png(const std::string& path, const Image& image) {
  check_writable_image(path, image);
  std::vector<uint8_t> encoded;
  int ok = stbi_write_png_to_func(append_bytes, &encoded, int(image.width), int(image.height), 3, image.pixels.data(),
                                  int(image.width * 3));
  ENG_CHECK(ok != 0 && !encoded.empty(), "{}: PNG encoding failed", path);
  eng::io::write_file_atomic(path, encoded.data(), encoded.size());
}

void write_png(const std::string& path, const eng::Tensor& chw) { write_png(path, tensor_to_image(chw, path)); }

eng::Tensor make_grid(const eng::Tensor& images, int64_t ncols, int64_t padding, float pad_value) {
  ENG_CHECK(images.defined() && images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3),
            "make_grid: expected images [N, 3 or 1, H, W], got {}", images.defined() ? eng::shape_str(images.shape()) : "undefined");
  ENG_CHECK(ncols > 0 && padding >= 0, "make_grid: ncols must be > 0 and padding >= 0 (got {}, {})", ncols, padding);
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  ENG_CHECK(n > 0, "make_grid: no images");
  const int64_t cols = std::min(ncols, n), rows = (n + cols - 1) / cols;
  const int64_t gh = rows * (h + padding) + padding, gw = cols * (w + padding) + padding;
  std::vector<float> src = images.to_vector<float>();
  eng::Tensor grid = eng::Tensor::full({3, gh, gw}, pad_value);
  float* g = grid.data<float>();
  for (int64_t i = 0; i < n; i++) {
    const int64_t y0 = padding + (i / cols) * (h + padding), x0 = padding + (i % cols) * (w + padding);
    for (int64_t k = 0; k < 3; k++) {
      const float* s = src.data() + ((i * c) + (c == 1 ? 0 : k)) * h * w;
      for (int64_t y = 0; y < h; y++)
        std::copy(s + y * w, s + (y + 1) * w, g + (k * gh + y0 + y) * gw + x0);
    }
  }
  return grid;
}

}  // namespace data
