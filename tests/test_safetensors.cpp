// test_safetensors.cpp: safetensors round trips (every dtype, views, metadata, empty and 0-d tensors),
// the exact byte layout, every malformed-file error, atomic writes, and interop with the Python
// `safetensors` package (tests/check_safetensors.py; skipped when the package is absent).
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include <nlohmann/json.hpp>

#include "engine/io/safetensors.h"
#include "tests/test_util.h"

using eng::DType;
using eng::Shape;
using eng::Tensor;
namespace fs = std::filesystem;
using testutil::atomic_temporary_left;
using testutil::error_of;
using testutil::TempDir;

namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// The row-major bytes of a tensor, whatever its layout.
std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  const uint8_t* p = static_cast<const uint8_t*>(c.raw_data());
  return c.nbytes() ? std::vector<uint8_t>(p, p + c.nbytes()) : std::vector<uint8_t>();
}

void check_same_tensor(const Tensor& got, const Tensor& want, const std::string& name) {
  INFO("tensor " << name);
  REQUIRE(got.defined());
  CHECK(got.dtype() == want.dtype());
  CHECK(got.shape() == want.shape());
  CHECK(got.is_contiguous());
  CHECK(bytes_of(got) == bytes_of(want));  // bitwise: NaN payloads, -0 and denormals survive
}

// The tensors that both this test and tests/check_safetensors.py know by heart (keep the two in step).
std::map<std::string, Tensor> reference_tensors() {
  const float finf = std::numeric_limits<float>::infinity();
  const double dinf = std::numeric_limits<double>::infinity();
  std::map<std::string, Tensor> m;
  std::vector<float> f32 = {0.0f, -0.0f, 1.5f, -2.25f, std::ldexp(1.0f, -140), std::numeric_limits<float>::max(),
                            finf, -finf, std::numeric_limits<float>::quiet_NaN(), 0.1f, 1e-3f, -7.0f};
  m["f32"] = Tensor::from_vector(f32, {3, 4});
  m["f64"] = Tensor::from_vector(std::vector<double>{0.1, -1e300, std::numeric_limits<double>::denorm_min(),
                                                     3.141592653589793, -0.0, -dinf},
                                 {2, 3});
  m["bf16"] = Tensor::from_vector(std::vector<float>{1.0f, -2.5f, 0.15625f, 256.0f, -0.0f}, {5}, DType::BF16);
  m["i32"] = Tensor::from_vector(std::vector<int32_t>{std::numeric_limits<int32_t>::min(), -1, 0,
                                                      std::numeric_limits<int32_t>::max()},
                                 {4});
  const int64_t p53 = (int64_t(1) << 53) + 1;  // not representable as a double
  m["i64"] = Tensor::from_vector(std::vector<int64_t>{std::numeric_limits<int64_t>::min(), -p53, p53,
                                                      std::numeric_limits<int64_t>::max()},
                                 {2, 2});
  m["scalar"] = Tensor::from_vector(std::vector<float>{42.5f}, {});
  m["empty"] = Tensor::empty({2, 0}, DType::F32);
  m["nested.name.weight"] = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {1, 2, 3});
  return m;
}
const std::map<std::string, std::string> kReferenceMetadata = {
    {"note", "h\xc3\xa9llo \"quoted\"\nline2"}, {"empty", ""}, {"format", "test"}};

// A file image: 8-byte little-endian length, the header text as given, then the data buffer.
std::vector<uint8_t> file_image(const std::string& header, size_t buffer_bytes = 0) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  s += header;
  for (size_t i = 0; i < buffer_bytes; i++) s += char(i * 37 + 11);
  return std::vector<uint8_t>(s.begin(), s.end());
}
std::vector<uint8_t> with_length(uint64_t header_len, size_t total) {
  std::vector<uint8_t> out(total, uint8_t('{'));
  for (int i = 0; i < 8 && size_t(i) < total; i++) out[size_t(i)] = uint8_t((header_len >> (8 * i)) & 0xff);
  return out;
}

// Expects both the in-memory parser and the file loader to refuse `image` with a message naming the
// file and containing every key word.
void expect_refused(const std::vector<uint8_t>& image, const std::vector<std::string>& words) {
  static int counter = 0;
  TempDir dir("st_bad");
  const std::string path = dir.file("bad" + std::to_string(counter++) + ".safetensors");
  write_bytes(path, image);
  for (int via_file = 0; via_file < 2; via_file++) {
    const std::string name = via_file ? path : std::string("bad.safetensors");
    std::string msg;
    try {
      if (via_file)
        eng::load_safetensors(path);
      else
        eng::parse_safetensors(image.data(), image.size(), name);
    } catch (const eng::Error& e) {
      msg = e.what();
    }
    INFO("via " << (via_file ? "load_safetensors" : "parse_safetensors") << ": " << msg);
    REQUIRE_FALSE(msg.empty());
    CHECK(msg.find(name + ": ") == 0);
    CHECK(msg.find('\n') == std::string::npos);
    for (const std::string& w : words) CHECK_MESSAGE(msg.find(w) != std::string::npos, "missing '" << w << "'");
  }
}

// One valid entry's JSON text.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b,
                  uint64_t e) {
  return fmt::format("\"{}\":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}", name, dtype, shape, b, e);
}

}  // namespace

TEST_SUITE("safetensors") {

TEST_CASE("round trip of every dtype, bitwise, with metadata, empty and 0-d tensors") {
  TempDir dir("st_rt");
  auto tensors = reference_tensors();
  const std::string path = dir.file("ref.safetensors");
  eng::save_safetensors(path, tensors, kReferenceMetadata);
  CHECK_FALSE(atomic_temporary_left(path));

  for (int via_file = 0; via_file < 2; via_file++) {
    std::vector<uint8_t> image = read_bytes(path);
    eng::SafetensorsFile f = via_file ? eng::load_safetensors(path) : eng::parse_safetensors(image.data(), image.size(), "x");
    CHECK(f.metadata == kReferenceMetadata);
    REQUIRE(f.tensors.size() == tensors.size());
    for (const auto& [name, t] : tensors) check_same_tensor(f.tensors.at(name), t, name);
    CHECK(f.tensors.at("scalar").dim() == 0);
    CHECK(f.tensors.at("scalar").item() == 42.5);
    CHECK(f.tensors.at("empty").shape() == Shape{2, 0});
  }
  // The in-memory serializer produces exactly the file's bytes.
  CHECK(eng::serialize_safetensors(tensors, kReferenceMetadata) == read_bytes(path));
}

TEST_CASE("views and broadcast tensors are written in logical row-major order") {
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); i++) v[i] = float(i) * 0.5f - 1.0f;
  Tensor base = Tensor::from_vector(v, {3, 4});
  std::map<std::string, Tensor> m;
  m["transposed"] = base.transpose(0, 1);        // [4, 3], strides (1, 4)
  m["strided"] = base.slice(1, 1, 4, 2);         // [3, 2], columns 1 and 3
  m["row"] = base.select(0, 2);                  // [4] with a storage offset of 8
  m["expanded"] = base.select(0, 1).unsqueeze(0).expand({2, 4});  // stride 0 on dim 0
  m["i64_t"] = Tensor::arange(6, DType::I64).reshape({2, 3}).transpose(0, 1);
  auto image = eng::serialize_safetensors(m);
  auto f = eng::parse_safetensors(image.data(), image.size(), "views");

  auto at = [&](int64_t i, int64_t j) { return v[size_t(i * 4 + j)]; };
  std::vector<float> want_t, want_s, want_r, want_e;
  for (int64_t j = 0; j < 4; j++)
    for (int64_t i = 0; i < 3; i++) want_t.push_back(at(i, j));
  for (int64_t i = 0; i < 3; i++)
    for (int64_t j : {1, 3}) want_s.push_back(at(i, j));
  for (int64_t j = 0; j < 4; j++) want_r.push_back(at(2, j));
  for (int r = 0; r < 2; r++)
    for (int64_t j = 0; j < 4; j++) want_e.push_back(at(1, j));
  CHECK(f.tensors.at("transposed").shape() == Shape{4, 3});
  CHECK(f.tensors.at("transposed").to_vector<float>() == want_t);
  CHECK(f.tensors.at("strided").to_vector<float>() == want_s);
  CHECK(f.tensors.at("row").to_vector<float>() == want_r);
  CHECK(f.tensors.at("expanded").shape() == Shape{2, 4});
  CHECK(f.tensors.at("expanded").to_vector<float>() == want_e);
  CHECK(f.tensors.at("i64_t").to_vector<int64_t>() == std::vector<int64_t>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("byte layout: little-endian length, space padding to 8, tensors packed in name order") {
  std::map<std::string, Tensor> m;
  m["b"] = Tensor::from_vector(std::vector<int32_t>{7}, {1});
  m["a"] = Tensor::from_vector(std::vector<double>{1, 2}, {2});
  m["c"] = Tensor::from_vector(std::vector<float>{3}, {}, DType::BF16);
  auto image = eng::serialize_safetensors(m, {{"k", "v"}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | image[size_t(i)];
  REQUIRE(8 + n <= image.size());
  CHECK(n % 8 == 0);
  std::string header(image.begin() + 8, image.begin() + 8 + long(n));
  CHECK(header.back() != '\0');
  size_t last = header.find_last_not_of(' ');
  for (size_t i = last + 1; i < header.size(); i++) CHECK(header[i] == ' ');
  auto j = nlohmann::json::parse(header);
  // The caller's metadata, and the writer's tensor checksums (tests/test_integrity.cpp checks their values).
  CHECK(j["__metadata__"].size() == 2);
  CHECK(j["__metadata__"]["k"] == "v");
  CHECK(nlohmann::json::parse(j["__metadata__"]["checksums"].get<std::string>()).size() == 3);
  CHECK(j["a"]["dtype"] == "F64");
  CHECK(j["a"]["data_offsets"] == nlohmann::json{0, 16});
  CHECK(j["b"]["dtype"] == "I32");
  CHECK(j["b"]["data_offsets"] == nlohmann::json{16, 20});
  CHECK(j["c"]["dtype"] == "BF16");
  CHECK(j["c"]["shape"] == nlohmann::json::array());
  CHECK(j["c"]["data_offsets"] == nlohmann::json{20, 22});
  CHECK(image.size() == 8 + n + 22);
  // bf16(3.0) = 0x4040, little-endian
  CHECK(image[8 + n + 20] == 0x40);
  CHECK(image[8 + n + 21] == 0x40);
  // Writing the same tensors twice gives the same bytes (deterministic order and formatting).
  CHECK(eng::serialize_safetensors(m, {{"k", "v"}}) == image);
  // No tensors at all is a valid file too.
  auto empty = eng::serialize_safetensors({});
  auto f = eng::parse_safetensors(empty.data(), empty.size(), "empty");
  CHECK(f.tensors.empty());
  CHECK(f.metadata.empty());
}

TEST_CASE("unreadable and truncated files") {
  TempDir dir("st_io");
  std::string missing = dir.file("nope.safetensors");
  std::string msg = error_of([&] { eng::load_safetensors(missing); });
  CHECK(msg.find(missing + ": cannot open") == 0);
  CHECK(msg.find("No such file") != std::string::npos);
  msg = error_of([&] { eng::load_safetensors(dir.path.string()); });
  CHECK(msg.find("not a regular file") != std::string::npos);

  expect_refused({}, {"0 bytes is too short"});
  expect_refused({1, 0, 0, 0, 0}, {"5 bytes is too short"});
  expect_refused(with_length(100, 60), {"header length 100 is larger than the rest of the file (52 bytes)"});
  expect_refused(with_length(uint64_t(1) << 40, 64), {"header length 1099511627776 is absurd"});
  expect_refused(with_length(~uint64_t(0), 64), {"absurd"});
  // A valid file cut short anywhere is refused, never misread.
  auto image = eng::serialize_safetensors(reference_tensors(), kReferenceMetadata);
  for (size_t cut : {size_t(8), size_t(9), size_t(100), image.size() - 1}) {
    std::vector<uint8_t> shorter(image.begin(), image.begin() + long(cut));
    std::string m = error_of([&] { eng::parse_safetensors(shorter.data(), shorter.size(), "cut"); });
    CHECK_MESSAGE(m.find("cut: ") == 0, "cut at " << cut << ": " << m);
  }
}

TEST_CASE("header that is not a JSON object") {
  expect_refused(file_image("{\"a\": "), {"header is not valid JSON", "parse error"});
  expect_refused(file_image("not json"), {"header is not valid JSON"});
  expect_refused(file_image("{} trailing"), {"header is not valid JSON"});
  expect_refused(file_image("{\"\xff\xfe\": 1}"), {"header is not valid JSON"});  // invalid UTF-8
  expect_refused(file_image(""), {"header is not valid JSON"});
  expect_refused(file_image("[1, 2]"), {"header is a JSON array, not an object"});
  expect_refused(file_image("\"str\""), {"header is a JSON string, not an object"});
  expect_refused(file_image("{" + entry("x", "F32", "[1]", 0, 4) + "," + entry("x", "F32", "[1]", 4, 8) + "}", 8),
                 {"header names 'x' twice"});
}

TEST_CASE("entries with missing keys or wrong JSON types") {
  expect_refused(file_image("{\"x\": 3}"), {"tensor 'x' is described by a JSON number, not an object"});
  expect_refused(file_image("{\"x\": {\"shape\":[1],\"data_offsets\":[0,4]}}", 4), {"tensor 'x' has no \"dtype\""});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), {"tensor 'x' has no \"shape\""});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[1]}}", 4), {"tensor 'x' has no \"data_offsets\""});
  expect_refused(file_image("{\"x\": {\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                 {"tensor 'x'", "\"dtype\" is a JSON number, not a string"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4),
                 {"\"shape\" is a JSON string, not an array"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4),
                 {"tensor 'x': shape entry 0 is not an integer"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[2,\"a\"],\"data_offsets\":[0,8]}}", 8),
                 {"shape entry 1 is not an integer"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4),
                 {"\"data_offsets\" must be an array [begin, end], found a JSON array of 1 elements"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0,4\"}}", 4),
                 {"\"data_offsets\" must be an array", "string"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4),
                 {"data_offsets end is not an integer"});
  expect_refused(file_image("{\"x\": {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4),
                 {"data_offsets begin is negative"});
  expect_refused(file_image("{\"__metadata__\": [1]}"), {"__metadata__ is a JSON array, not an object"});
  expect_refused(file_image("{\"__metadata__\": {\"step\": 3}}"),
                 {"__metadata__ value 'step' is a JSON number, not a string"});
  // A name with a newline is escaped: the error stays one line.
  expect_refused(file_image("{\"a\\nb\": 3}"), {"tensor 'a\\x0ab'"});
}

TEST_CASE("unsupported dtypes") {
  expect_refused(file_image("{" + entry("x", "F16", "[2]", 0, 4) + "}", 4), {"unsupported dtype F16 for tensor 'x'"});
  expect_refused(file_image("{" + entry("w", "U8", "[4]", 0, 4) + "}", 4), {"unsupported dtype U8 for tensor 'w'"});
  expect_refused(file_image("{" + entry("y", "f32", "[1]", 0, 4) + "}", 4),
                 {"unsupported dtype 'f32' for tensor 'y' (not a safetensors dtype)"});
}

TEST_CASE("shapes: negative, overflowing, too many dims") {
  expect_refused(file_image("{" + entry("x", "F32", "[-1]", 0, 0) + "}"), {"tensor 'x': shape entry 0 is negative"});
  expect_refused(file_image("{" + entry("x", "F32", "[4294967296,4294967296]", 0, 0) + "}"),
                 {"the product of shape", "overflows 64 bits"});
  // A zero dim makes numel 0, but the other sizes still have to multiply within 64 bits (strides).
  expect_refused(file_image("{" + entry("x", "F32", "[0,4294967296,4294967296]", 0, 0) + "}"), {"overflows 64 bits"});
  expect_refused(file_image("{" + entry("x", "F32", "[4611686018427387904]", 0, 0) + "}"),
                 {"byte size overflows 64 bits"});
  expect_refused(file_image("{" + entry("x", "I64", "[18446744073709551615]", 0, 0) + "}"),
                 {"shape entry 0 does not fit in 63 bits"});
  expect_refused(file_image("{" + entry("x", "F32", "[1,1,1,1,1,1,1,1,1]", 0, 4) + "}", 4),
                 {"tensor 'x' has 9 dims; this engine supports at most 8"});
}

TEST_CASE("data offsets: wrong size, reversed, beyond the buffer, overlapping, gaps, trailing bytes") {
  expect_refused(file_image("{" + entry("x", "F32", "[2]", 0, 4) + "}", 4),
                 {"tensor 'x': data_offsets [0, 4] hold 4 bytes but shape [2] of F32 needs 8"});
  expect_refused(file_image("{" + entry("x", "F32", "[2]", 8, 0) + "}", 8), {"data_offsets [8, 0] end before they begin"});
  expect_refused(file_image("{" + entry("x", "F64", "[1]", 0, 8) + "}", 4),
                 {"tensor 'x': data_offsets [0, 8] reach beyond the data buffer (4 bytes)"});
  expect_refused(file_image("{" + entry("x", "I64", "[1]", 18446744073709551607ull, 18446744073709551615ull) + "}", 8),
                 {"does not fit in 63 bits"});
  expect_refused(file_image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", 12),
                 {"tensors 'a' [0, 8] and 'b' [4, 12] overlap"});
  expect_refused(file_image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 0, 8) + "}", 8),
                 {"overlap"});
  // An empty tensor inside another one's bytes also overlaps it.
  expect_refused(file_image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("z", "F32", "[0]", 4, 4) + "}", 8),
                 {"tensors 'a' [0, 8] and 'z' [4, 4] overlap"});
  expect_refused(file_image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}", 12),
                 {"bytes [4, 8) of the data buffer belong to no tensor (gap before 'b')"});
  expect_refused(file_image("{" + entry("a", "F32", "[1]", 4, 8) + "}", 8), {"bytes [0, 4)", "belong to no tensor"});
  expect_refused(file_image("{" + entry("a", "F32", "[1]", 0, 4) + "}", 9),
                 {"5 trailing bytes after the last tensor (the data buffer holds 9 bytes, the tensors cover 4)"});
  expect_refused(file_image("{}", 1), {"1 trailing bytes"});

  // Hand-built but valid: out-of-order offsets, an empty tensor at a boundary, extra keys ignored.
  std::string ok = "{\"__metadata__\":{\"m\":\"v\"}," + entry("b", "I32", "[1]", 0, 4) + "," +
                   entry("a", "I32", "[1]", 4, 8) + "," + entry("e", "F64", "[0, 3]", 4, 4) + "," +
                   "\"z\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[8,12],\"extra\":[1]}}  ";
  auto image = file_image(ok);
  for (int32_t v : {10, 20, 30}) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    image.insert(image.end(), b, b + 4);
  }
  auto f = eng::parse_safetensors(image.data(), image.size(), "ok");
  CHECK(f.tensors.at("b").to_vector<int32_t>() == std::vector<int32_t>{10});
  CHECK(f.tensors.at("a").to_vector<int32_t>() == std::vector<int32_t>{20});
  CHECK(f.tensors.at("z").to_vector<int32_t>() == std::vector<int32_t>{30});
  CHECK(f.tensors.at("e").shape() == Shape{0, 3});
  CHECK(f.metadata.at("m") == "v");
}

TEST_CASE("writing refuses bad input and leaves no file behind") {
  TempDir dir("st_wbad");
  std::map<std::string, Tensor> m = {{"__metadata__", Tensor::zeros({1})}};
  std::string path = dir.file("w.safetensors");
  CHECK(error_of([&] { eng::save_safetensors(path, m); }).find("cannot be named __metadata__") != std::string::npos);
  m = {{"ok", Tensor::zeros({1})}, {"undefined", Tensor()}};
  CHECK(error_of([&] { eng::save_safetensors(path, m); }).find(path + ": tensor 'undefined' is undefined") == 0);
  m = {{"bad\xff", Tensor::zeros({1})}};
  CHECK(error_of([&] { eng::save_safetensors(path, m); }).find("UTF-8") != std::string::npos);
  CHECK(fs::is_empty(dir.path));
}

TEST_CASE("atomic write: an existing file survives a failed write, no temporary file stays behind") {
  TempDir dir("st_atomic");
  const std::string path = dir.file("model.safetensors");
  std::map<std::string, Tensor> old_tensors = {{"w", Tensor::full({4}, 1.0)}};
  eng::save_safetensors(path, old_tensors, {{"version", "old"}});
  const auto old_bytes = read_bytes(path);
  auto still_old = [&] {
    CHECK(read_bytes(path) == old_bytes);
    CHECK_FALSE(atomic_temporary_left(path));
  };

  SUBCASE("a tensor that cannot be written") {
    std::map<std::string, Tensor> bad = {{"w", Tensor::full({4}, 2.0)}, {"x", Tensor()}};
    CHECK_THROWS_AS(eng::save_safetensors(path, bad), eng::Error);
    still_old();
  }
  SUBCASE("the temporary file cannot be created") {
    // The old file under a name that leaves no room for the temporary file's longer one.
    const std::string tight = testutil::name_without_room_for_temporary(dir, ".safetensors");
    fs::copy_file(path, tight);
    std::string msg = error_of([&] { eng::save_safetensors(tight, {{"w", Tensor::full({4}, 2.0)}}); });
    CHECK(msg.find(tight + ": cannot create the temporary file") == 0);
    CHECK(read_bytes(tight) == old_bytes);
    CHECK_FALSE(atomic_temporary_left(tight));
    fs::remove(tight);
  }
  SUBCASE("the disk fills up in the middle of the data") {
    // RLIMIT_FSIZE makes write() fail with EFBIG past 64 KiB (SIGXFSZ ignored meanwhile), as a full disk would.
    struct rlimit old_limit;
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old_limit;
    small.rlim_cur = 64 * 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    std::string msg = error_of([&] { eng::save_safetensors(path, {{"big", Tensor::zeros({1 << 20})}}); });
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
    CHECK(msg.find("write failed") != std::string::npos);
    CHECK(msg.find("File too large") != std::string::npos);
    still_old();
  }
  SUBCASE("the directory does not exist") {
    std::string other = dir.file("no/such/dir/m.safetensors");
    CHECK(error_of([&] { eng::save_safetensors(other, old_tensors); }).find(other + ": cannot create") == 0);
    still_old();
  }
  SUBCASE("a successful write replaces the file and cleans up") {
    eng::save_safetensors(path, {{"w", Tensor::full({4}, 2.0)}}, {{"version", "new"}});
    CHECK_FALSE(atomic_temporary_left(path));
    auto f = eng::load_safetensors(path);
    CHECK(f.metadata.at("version") == "new");
    CHECK(f.tensors.at("w").to_vector<float>() == std::vector<float>(4, 2.0f));
    CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  }
}

TEST_CASE("interop with the Python safetensors package") {
  if (std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: python3 with the safetensors and numpy packages is not available");
    return;
  }
  // tests run from the repository root; __FILE__ is the path the compiler was given.
  std::string script = (fs::path(__FILE__).parent_path() / "check_safetensors.py").string();
  if (!fs::exists(script)) script = "tests/check_safetensors.py";
  if (!fs::exists(script)) {
    MESSAGE("skipped: tests/check_safetensors.py not found from the working directory");
    return;
  }
  TempDir dir("st_py");
  const std::string log = dir.file("log.txt");
  auto run = [&](const std::string& mode, const std::string& file) {
    std::string cmd = "python3 '" + script + "' " + mode + " '" + file + "' >'" + log + "' 2>&1";
    int rc = std::system(cmd.c_str());
    std::ifstream in(log);
    std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    INFO("python said: " << out);
    CHECK(rc == 0);
  };

  SUBCASE("C++ writes, Python reads") {
    auto tensors = reference_tensors();
    tensors["f32_t"] = tensors.at("f32").transpose(0, 1);  // a view: written as the transposed values
    const std::string path = dir.file("from_cpp.safetensors");
    eng::save_safetensors(path, tensors, kReferenceMetadata);
    run("verify", path);
  }
  SUBCASE("Python writes, C++ reads") {
    const std::string path = dir.file("from_py.safetensors");
    run("write", path);
    auto f = eng::load_safetensors(path);
    auto want = reference_tensors();
    want["f32_t"] = want.at("f32").transpose(0, 1).contiguous();
    REQUIRE(f.tensors.size() == want.size());
    for (const auto& [name, t] : want) check_same_tensor(f.tensors.at(name), t, name);
    CHECK(f.metadata == kReferenceMetadata);
  }
}

}  // TEST_SUITE
