// test_fuzz_findings.cpp: one regression test per finding of the libFuzzer targets in fuzz/ (fuzz/README.md lists
// them). Each input is the fuzzer's own artifact, kept in fuzz/regressions/ (tests run from the repository root),
// or rebuilt here when it is simpler written out; each must now be refused with a one-line eng::Error naming the
// input, instead of the memory error, undefined behaviour, stray exception or multi-line message it caused.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

#include "data/idx.h"
#include "data/image.h"
#include "engine/io/safetensors.h"
#include "moce/cluster/io.h"
#include "moce/common/cli.h"
#include "moce/train/pretrain_config.h"
#include "tests/test_util.h"

using testutil::error_of;
using testutil::TempDir;

namespace {

std::vector<uint8_t> regression_input(const std::string& name) {
  std::ifstream f("fuzz/regressions/" + name, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "fuzz/regressions/" << name << " is missing (tests run from the repository root)");
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

bool one_printable_line(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c >= 0x7F) return false;
  return !s.empty();
}

// The message of the CorruptImage decoding `bytes` throws ("" when it decodes; "other" for any other error).
std::string decode_refusal(const std::vector<uint8_t>& bytes, const std::string& name) {
  try {
    data::decode_image_bytes(bytes.data(), bytes.size(), name);
  } catch (const data::CorruptImage& e) {
    return e.what();
  } catch (...) {
    return "other";
  }
  return "";
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

// A safetensors file with this JSON header and `data` after it, written out by hand so that it can break any rule.
std::string safetensors_bytes(std::string header, const std::string& data = "") {
  while (header.size() % 8 != 0) header += ' ';  // the data section 8-byte aligned, as our writer does
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// The message of the eng::Error that f throws; "other: ..." for any other exception (a finding), "" for none.
std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const eng::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("other: ") + e.what();
  }
  return "";
}

}  // namespace

TEST_SUITE("fuzz findings") {

TEST_CASE("image: a JPEG Huffman table of more than 256 codes is refused before stb_image writes past its table") {
  // stb_image 2.27 wrote h->size[257] (UBSan: index 257 out of bounds for 'stbi_uc[257]') for both: a table whose
  // 16 counts sum past 256, and one whose last table runs past its segment's end into the next segment's bytes.
  for (const char* file : {"image-jpeg-dht-257-codes.jpg", "image-jpeg-dht-past-segment-end.jpg"}) {
    CAPTURE(file);
    const std::string err = decode_refusal(regression_input(file), file);
    CHECK(err.rfind(std::string(file) + ": cannot decode JPEG data (", 0) == 0);
    CHECK(err.find("a Huffman table with more than 256 codes") != std::string::npos);
    CHECK(one_printable_line(err));
  }
}

TEST_CASE("image: stb_image's reason quoting the file's bytes is escaped into one printable line") {
  // A PNG whose unknown chunk type held a newline and bytes >= 0x80: stb's reason "<type> PNG chunk not known"
  // carried them into the message, which then spanned two lines.
  const std::string file = "image-png-unknown-chunk-raw-bytes.png";
  const std::string err = decode_refusal(regression_input(file), file);
  CHECK(err.rfind(file + ": cannot decode PNG data (", 0) == 0);
  CHECK(err.find("PNG chunk not known") != std::string::npos);
  CHECK(err.find("\\x") != std::string::npos);
  CHECK(one_printable_line(err));
}

TEST_CASE("image: PPM/PGM and BMP headers stb_image 2.27 mishandles are refused, naming the reason") {
  struct Case {
    const char* file;
    const char* reason;  // stb's behaviour before the fix
  } cases[] = {
      // ASan: heap-buffer-overflow READ in stbi__convert_16_to_8 (a 16-bit PGM expanded to RGB as if 8-bit)
      {"image-pgm-16-bit.pgm", "(476 bytes; a 16-bit PGM, which stb_image 2.27 cannot read)"},
      // accepted as a 0 x 0 image
      {"image-ppm-zero-width.ppm", "(727 bytes; the header gives 0 x 0 pixels)"},
      // 245 bytes decoded to 28 x 2359324 pixels of zeros (200 MB, 81 s under ASan)
      {"image-bmp-rows-past-end.bmp",
       "(245 bytes; 28 x 2359324 pixels of 24 bits need 198183216 bytes of rows, the file holds 191)"},
      // 7 KB claiming 592356 x 228 pixels: libFuzzer's out-of-memory (2 GB) while stb decoded it
      {"image-bmp-592356-wide.bmp", ": 592356 x 228 pixels is larger than the decoder takes (67108864 pixels at most)"},
      // UBSan: signed overflow in the check of the row bytes above (rows x row bytes past 2^63)
      {"image-bmp-rows-overflow.bmp", "(38 bytes; 143198474 x 222776912 pixels of 2561 bits need 10212408093909071872 bytes of rows, the file holds 0)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.file);
    const std::string err = decode_refusal(regression_input(c.file), c.file);
    CHECK(err.rfind(c.file, 0) == 0);
    CHECK(err.find(c.reason) != std::string::npos);
    CHECK(one_printable_line(err));
  }
  // Written here: a PPM one byte short of its samples (stb decoded it from uninitialised memory), and a PNG header
  // claiming 16384 x 16384 pixels (stb would allocate 768 MB before finding the data missing).
  std::string ppm = "P6\n2 2\n255\n" + std::string(11, '\x7f');
  CHECK(decode_refusal(std::vector<uint8_t>(ppm.begin(), ppm.end()), "short.ppm") ==
        "short.ppm: cannot decode PPM/PGM data (22 bytes; 2 x 2 pixels need 12 bytes of samples, the file holds 11): "
        "truncated or corrupt file");
  ppm.push_back('\x7f');
  CHECK(decode_refusal(std::vector<uint8_t>(ppm.begin(), ppm.end()), "full.ppm") == "");
  const std::string png = std::string("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x40\0\0\0\x40\0\x08\x02\0\0\0", 29) +
                          std::string(4, '\0');
  CHECK(decode_refusal(std::vector<uint8_t>(png.begin(), png.end()), "big.png") ==
        "big.png: 16384 x 16384 pixels is larger than the decoder takes (67108864 pixels at most): corrupt header or not "
        "a data-set image");
}

TEST_CASE("image: a zero-length IDAT chunk (stb_image 2.27 memcpys it to NULL) is dropped: the same picture decodes") {
  TempDir tmp("fuzz_png_idat");
  data::Image picture;
  picture.height = 3;
  picture.width = 5;
  for (int i = 0; i < 3 * 5 * 3; i++) picture.pixels.push_back(uint8_t(17 * i + 3));
  data::write_png(tmp.file("p.png"), picture);
  std::ifstream f(tmp.file("p.png"), std::ios::binary);
  std::string png((std::istreambuf_iterator<char>(f)), {});
  const size_t idat = png.find("IDAT");
  REQUIRE(idat != std::string::npos);
  // Two empty IDAT chunks before the real one (length 0, type, no data, a CRC stb does not read).
  const std::string empty_idat = be32(0) + "IDAT" + be32(0x35af061e);
  const std::string edited = png.substr(0, idat - 4) + empty_idat + empty_idat + png.substr(idat - 4);
  const data::Image back = data::decode_image_bytes(reinterpret_cast<const uint8_t*>(edited.data()), edited.size(), "e.png");
  CHECK(back.height == 3);
  CHECK(back.width == 5);
  CHECK(back.pixels == picture.pixels);
  // The fuzzer's input (a mutated 32 x 32 PNG whose first IDAT is empty): decoded or one printable line, no UB
  // (the SANITIZE=1 build and the fuzz smoke check the latter).
  const std::string msg = decode_refusal(regression_input("image-png-empty-idat.png"), "i.png");
  CHECK_MESSAGE((msg.empty() || (msg.rfind("i.png: ", 0) == 0 && one_printable_line(msg))), msg);
}

TEST_CASE("image: a format other than JPEG, PNG, PPM/PGM and BMP never reaches stb_image's other decoders") {
  for (const std::string head : {std::string("GIF89a\x01\0\x01\0\0\0\0", 13), std::string("8BPS\0\x01", 6),
                                 std::string("#?RADIANCE\n", 11), std::string("\0\0\x02\0\0\0\0\0", 8)}) {
    CHECK(decode_refusal(std::vector<uint8_t>(head.begin(), head.end()), "x.img") ==
          "x.img: not an image: the first bytes match none of JPEG, PNG, PPM/PGM, BMP");
  }
}

TEST_CASE("idx: four large dimensions are refused before their product overflows; a huge claim costs no memory") {
  TempDir tmp("fuzz_findings");
  // 4 dims of 2^28 - 1: the element count overflowed int64 (UBSan: signed integer overflow at idx.cpp:37).
  const std::string big = tmp.file("big-idx4-ubyte");
  write_file(big, std::string("\0\0\x08\x04", 4) + be32((1u << 28) - 1) + be32((1u << 28) - 1) + be32((1u << 28) - 1) +
                      be32((1u << 28) - 1));
  CHECK(refusal([&] { data::read_idx(big); }) ==
        big + ": dimensions [268435455, 268435455] hold too many elements (at most 2^32 - 1)");
  // 65535 x 65535 bytes claimed by a 12-byte file: refused as truncated after reading what is there (the buffer
  // grows with the data instead of being allocated at the claimed 4 GB first).
  const std::string claim = tmp.file("claim-idx2-ubyte");
  write_file(claim, std::string("\0\0\x08\x02", 4) + be32(65535) + be32(65535));
  CHECK(refusal([&] { data::read_idx(claim); }) ==
        claim + ": truncated while reading the data (0 of 4294836225 bytes)");
}

TEST_CASE("run config: a missing key or a value of the wrong type is one eng::Error, not a nlohmann exception") {
  nlohmann::json run = moce::options_to_json(moce::PretrainOptions{});
  CHECK(moce::options_to_json(moce::options_from_json(run)) == run);
  nlohmann::json missing = run;
  missing.erase("min_lr");
  CHECK(refusal([&] { moce::options_from_json(missing); }) ==
        "run config: [json.exception.out_of_range.403] key 'min_lr' not found");
  nlohmann::json wrong = run;
  wrong["strict"] = 3;
  CHECK(refusal([&] { moce::options_from_json(wrong); }).rfind("run config: [json.exception.type_error.302]", 0) == 0);
  // A float into an integer field: nlohmann's cast was undefined behaviour for 1e300 (UBSan: float-cast-overflow).
  nlohmann::json huge = run;
  huge["epochs"] = 1e300;
  CHECK(refusal([&] { moce::options_from_json(huge); }) == "run config: \"epochs\" must be an integer, got number 1e+300");
  CHECK(refusal([&] { moce::options_from_json(nlohmann::json::array()); }) ==
        "run config: expected a JSON object, got array");
}

TEST_CASE("flags: a value holding a newline is shown escaped, so the error stays one line") {
  moce::Args a("pretrain", "test");
  a.add("epochs", "5", "epochs");
  std::string arg = "-i\n-resume";
  std::vector<char*> argv = {const_cast<char*>("moce"), const_cast<char*>("pretrain"), arg.data()};
  CHECK(refusal([&] { a.parse(3, argv.data(), 2); }) ==
        "pretrain: unexpected argument '-i\\x0a-resume' (flags start with --; see --help)");
  std::string flag = "--epochs=1\n2";
  argv[2] = flag.data();
  REQUIRE(a.parse(3, argv.data(), 2));
  CHECK(refusal([&] { a.i64("epochs"); }) == "pretrain: --epochs expects an integer, got '1\\x0a2'");
  CHECK(refusal([&] { moce::parse_index_list("1,2\r", "--moe-blocks", "block numbers"); }) ==
        "--moe-blocks 1,2\\x0d: expected block numbers");
  // fuzz_cli's 10-minute run: a number out of the double range with newlines after it was quoted raw (and called
  // out of range though it is no number); one past the range alone, and leading whitespace before nan, stay one line.
  moce::Args b("pretrain", "test");
  b.add("base-lr", "", "lr").add("min-lr", "0", "min").add("clip-grad", "0", "clip");
  std::string lr = "--base-lr=1e555;\n\n", min = "--min-lr=1e555", clip = "--clip-grad=\n nan";
  std::vector<char*> bv = {const_cast<char*>("moce"), const_cast<char*>("pretrain"), lr.data(), min.data(), clip.data()};
  REQUIRE(b.parse(5, bv.data(), 2));
  CHECK(refusal([&] { b.f64("base-lr"); }) == "pretrain: --base-lr expects a number, got '1e555;\\x0a\\x0a'");
  CHECK(refusal([&] { b.f64("min-lr"); }) == "--min-lr 1e555: expected a finite number (this one is out of the double range)");
  CHECK(refusal([&] { b.f64("clip-grad"); }) == "--clip-grad \\x0a nan: expected a finite number");
}

TEST_CASE("cluster files: a bad clusters count, an assignment out of range, a bad bank shape are one line naming the file") {
  TempDir tmp("fuzz_findings");
  auto assignments = [&](const std::string& clusters, std::vector<int32_t> c) {
    const std::string path = tmp.file("assignments.safetensors");
    const int64_t n = int64_t(c.size());
    std::vector<int64_t> idx(c.size());
    for (size_t i = 0; i < idx.size(); i++) idx[i] = int64_t(i);
    std::vector<uint8_t> bytes = eng::serialize_safetensors(
        {{"cluster", eng::Tensor::from_vector(c, {n})}, {"image_index", eng::Tensor::from_vector(idx, {n})}},
        {{"format", "moce-assignments"}, {"clusters", clusters}}, path);
    write_file(path, std::string(bytes.begin(), bytes.end()));
    return path;
  };
  // std::stoll threw std::invalid_argument past every eng::Error handler.
  std::string p = assignments("abc", {0, 1});
  CHECK(refusal([&] { moce::cluster::ClusterLookup l(p); }) ==
        p + ": metadata \"clusters\" must be a positive integer below 10^9, got \"abc\"");
  p = assignments("2", {0, 2});
  CHECK(refusal([&] { moce::cluster::ClusterLookup l(p); }) == p + ": row 1 is assigned to cluster 2, outside [0, 2)");
  p = assignments("2", {1, 0});
  CHECK(moce::cluster::ClusterLookup(p).cluster_of_image(1) == 0);

  // A bank whose 'features' shape holds a negative size: it wrapped the byte count (size_t) into a match.
  const std::string bank = tmp.file("bank.safetensors");
  const std::string meta = R"("__metadata__":{"format":"moce-feature-bank"})";
  write_file(bank, safetensors_bytes("{" + meta + R"(,"features":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,0]},)"
                                     R"("image_index":{"dtype":"I64","shape":[0],"data_offsets":[0,0]}})"));
  CHECK(refusal([&] { moce::cluster::read_bank(bank); }) ==
        bank + ": tensor 'features' needs a dtype, a shape and data_offsets of non-negative integers");
  // A metadata entry of the wrong type: nlohmann's type_error escaped.
  write_file(bank, safetensors_bytes(R"({"__metadata__":{"format":"moce-feature-bank","pool":7},)"
                                     R"("features":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
                                     R"("image_index":{"dtype":"I64","shape":[0],"data_offsets":[0,0]}})"));
  CHECK(refusal([&] { moce::cluster::read_bank(bank); }).rfind(bank + ": the feature bank's header: [json.exception.type_error.302]", 0) == 0);
}

}  // TEST_SUITE
