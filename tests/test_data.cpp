// test_data.cpp: the data pipeline: decoding (stb_image) and PNG writing, datasets (ImageFolder,
// IDX, CIFAR binary), transforms against hand-computed values and an f64 2-D reference, and the threaded
// loader (determinism across worker counts, epoch coverage, sharding, corrupt-image skipping, shutdown).
// Fixtures are generated at run time in a temporary folder, except one 654-byte JPEG in
// tests/fixtures/images/; real data (../shared/data, Debian's Fashion-MNIST) is used where present and
// skipped with a message where not.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "data/dataset.h"
#include "data/idx.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "engine/rng.h"

namespace fs = std::filesystem;
using data::Image;
using eng::Tensor;

namespace {

const char* kSharedData = "../shared/data";

// A fresh folder under the system temp dir, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("eng_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}
void write_text(const std::string& path, const std::string& text) {
  write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}
// write_png into a folder made first (the writer itself does not make folders).
void put_png(const std::string& path, const Image& img) {
  fs::create_directories(fs::path(path).parent_path());
  data::write_png(path, img);
}
std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// The one JPEG fixture: a 16x16 gradient, pixel (x, y, c) = 8 x + 4 y + 30 c, baseline JPEG quality 90,
// made by stb_image_write (which is not linked: its JPEG encoder trips UBSan, see data/image.cpp).
const char* kGradientJpeg = "tests/fixtures/images/gradient16.jpg";
std::vector<uint8_t> gradient_jpeg() {
  std::vector<uint8_t> bytes = read_bytes(kGradientJpeg);
  if (bytes.empty()) throw std::runtime_error(std::string(kGradientJpeg) + " is missing; run the tests from the repository root");
  return bytes;
}

// A smooth-ish random picture (JPEG keeps it recognisable), pixels from Philox so runs are identical.
Image random_image(int64_t h, int64_t w, uint64_t seed) {
  eng::Generator gen(seed);
  Image img;
  img.height = h;
  img.width = w;
  img.pixels.resize(size_t(h * w * 3));
  for (size_t i = 0; i < img.pixels.size(); i++) img.pixels[i] = uint8_t(gen.next_u64() >> 56);
  return img;
}

Tensor random_chw(int64_t c, int64_t h, int64_t w, uint64_t seed) {
  eng::Generator gen(seed);
  return gen.uniform({c, h, w});
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The message of the eng::Error (or subclass) that f throws; "" when it throws nothing.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// f64 reference for PIL-style resampling, written as one 2-D sum over every input pixel (not separable
// passes, not a tap window): weight(x, y) = f((x + 0.5 - cx) / sx) * f((y + 0.5 - cy) / sy), normalised.
double ref_filter(data::Interpolation ip, double x) {
  x = std::fabs(x);
  if (ip == data::Interpolation::Bilinear) return std::max(0.0, 1.0 - x);
  const double a = -0.5;
  if (x < 1) return (a + 2) * x * x * x - (a + 3) * x * x + 1;
  if (x < 2) return a * x * x * x - 5 * a * x * x + 8 * a * x - 4 * a;
  return 0;
}
std::vector<double> ref_resize(const Tensor& img, int64_t oh, int64_t ow, data::Interpolation ip, bool antialias) {
  const int64_t c = img.size(0), h = img.size(1), w = img.size(2);
  std::vector<float> v = img.to_vector<float>();
  const double scy = double(h) / oh, scx = double(w) / ow;
  const double sy = antialias ? std::max(1.0, scy) : 1.0, sx = antialias ? std::max(1.0, scx) : 1.0;
  const double support = ip == data::Interpolation::Bilinear ? 1.0 : 2.0;
  std::vector<double> out(size_t(c * oh * ow));
  for (int64_t k = 0; k < c; k++)
    for (int64_t oy = 0; oy < oh; oy++)
      for (int64_t ox = 0; ox < ow; ox++) {
        const double cy = (oy + 0.5) * scy, cx = (ox + 0.5) * scx;
        double num = 0, den = 0;
        for (int64_t y = 0; y < h; y++)
          for (int64_t x = 0; x < w; x++) {
            // The window PIL uses: pixel centres within the stretched support (edges excluded as PIL does).
            if (y < int64_t(cy - support * sy + 0.5) || y >= int64_t(cy + support * sy + 0.5)) continue;
            if (x < int64_t(cx - support * sx + 0.5) || x >= int64_t(cx + support * sx + 0.5)) continue;
            const double wgt = ref_filter(ip, (y + 0.5 - cy) / sy) * ref_filter(ip, (x + 0.5 - cx) / sx);
            num += wgt * v[size_t((k * h + y) * w + x)];
            den += wgt;
          }
        out[size_t((k * oh + oy) * ow + ox)] = num / den;
      }
  return out;
}

// Wraps a dataset; the listed indices throw CorruptImage, and `fail_hard` throws a plain eng::Error.
// `delay_us` makes every get() slow, to test shutdown in the middle of an epoch.
class FlakyDataset : public data::Dataset {
 public:
  FlakyDataset(std::shared_ptr<const data::Dataset> base, std::set<int64_t> corrupt, int64_t fail_hard = -1,
               int delay_us = 0)
      : base_(std::move(base)), corrupt_(std::move(corrupt)), fail_hard_(fail_hard), delay_us_(delay_us) {}
  int64_t size() const override { return base_->size(); }
  data::Sample get(int64_t i) const override {
    if (delay_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us_));
    if (corrupt_.count(i)) throw data::CorruptImage(id(i) + ": cannot decode JPEG data (test)");
    if (i == fail_hard_) throw eng::Error(id(i) + ": cannot open (test)");
    return base_->get(i);
  }
  std::string id(int64_t i) const override { return "flaky/" + std::to_string(i) + ".jpg"; }
  int64_t label(int64_t i) const override { return base_->label(i); }
  const std::vector<std::string>& classes() const override { return base_->classes(); }
  std::string describe() const override { return "Flaky(" + base_->describe() + ")"; }

 private:
  std::shared_ptr<const data::Dataset> base_;
  std::set<int64_t> corrupt_;
  int64_t fail_hard_;
  int delay_us_;
};

std::shared_ptr<data::TensorDataset> small_tensor_dataset(int64_t n, int64_t h = 8, int64_t w = 8) {
  eng::Generator gen(1234);
  Tensor images = gen.uniform({n, 3, h, w});
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; i++) labels.push_back(i % 5);
  return std::make_shared<data::TensorDataset>(images, Tensor::from_vector(labels, {n}));
}

data::Pipeline small_aug_pipeline() {
  data::Pipeline p;
  p.add(std::make_shared<data::RandomResizedCrop>(6, 6));
  p.add(std::make_shared<data::RandomHorizontalFlip>(0.5));
  p.add(std::make_shared<data::Normalize>());
  return p;
}

std::vector<data::Batch> whole_epoch(data::Loader& loader, int64_t epoch) {
  std::vector<data::Batch> out;
  loader.start_epoch(epoch);
  data::Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

std::vector<int64_t> all_indices(const std::vector<data::Batch>& batches) {
  std::vector<int64_t> idx;
  for (const auto& b : batches) {
    std::vector<int64_t> v = b.indices.to_vector<int64_t>();
    idx.insert(idx.end(), v.begin(), v.end());
  }
  return idx;
}

}  // namespace

TEST_SUITE("data") {

// ---- decoding and writing ---------------------------------------------------------------------------------

TEST_CASE("decode real CIFAR-10 JPEGs") {
  const std::string dir = std::string(kSharedData) + "/cifar10/test";
  if (!fs::exists(dir)) {
    MESSAGE("skipped: " << dir << " is absent");
    return;
  }
  for (const char* cls : {"airplane", "cat", "truck"}) {
    const std::string path = dir + "/" + cls + "/0000.jpg";
    Image img = data::decode_image(path);
    CHECK(img.height == 32);
    CHECK(img.width == 32);
    REQUIRE(img.pixels.size() == 32 * 32 * 3);
    // A real photo: many distinct values, not one flat colour, and the tensor is the bytes / 255.
    std::set<uint8_t> distinct(img.pixels.begin(), img.pixels.end());
    CHECK(distinct.size() > 40);
    Tensor t = data::image_to_tensor(img);
    CHECK(t.shape() == eng::Shape{3, 32, 32});
    const float* p = t.data<float>();
    CHECK(p[0] == float(img.pixels[0]) / 255.0f);                   // R of pixel (0, 0)
    CHECK(p[1024 + 5] == float(img.pixels[5 * 3 + 1]) / 255.0f);     // G of pixel (0, 5)
    CHECK(p[2048 + 33] == float(img.pixels[33 * 3 + 2]) / 255.0f);  // B of pixel (1, 1)
  }
  // Truncating a real JPEG anywhere past the header makes it undecodable, and the message says which file.
  TempDir tmp;
  std::vector<uint8_t> bytes = read_bytes(dir + "/airplane/0000.jpg");
  REQUIRE(bytes.size() > 300);
  for (size_t keep : {size_t(200), bytes.size() / 2, bytes.size() - 2}) {
    const std::string cut = tmp / ("cut" + std::to_string(keep) + ".jpg");
    write_bytes(cut, std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(keep)));
    std::string msg;
    try {
      data::decode_image(cut);
    } catch (const data::CorruptImage& e) {
      msg = e.what();
    }
    CHECK(contains(msg, cut));
    CHECK(contains(msg, "JPEG"));
  }
}

TEST_CASE("PNG write/read round trip; the JPEG fixture decodes to its formula") {
  TempDir tmp;
  Image img = random_image(13, 17, 7);
  const std::string png = tmp / "a.png";
  data::write_png(png, img);
  Image back = data::decode_image(png);
  CHECK(back.height == 13);
  CHECK(back.width == 17);
  CHECK(back.pixels == img.pixels);  // PNG is lossless
  // Overwriting goes through a temporary file + rename: afterwards only the PNG itself is in the folder.
  data::write_png(png, img);
  int files = 0;
  for (auto& e : fs::directory_iterator(tmp.path)) files += e.is_regular_file() ? 1 : 0;
  CHECK(files == 1);

  // A float tensor [3, H, W]: values k / 255 come back as the byte k; out-of-range values are clamped.
  Tensor t = Tensor::empty({3, 2, 3});
  float* p = t.data<float>();
  for (int i = 0; i < 18; i++) p[i] = float(i * 14) / 255.0f;
  p[0] = -0.5f;
  p[17] = 2.0f;
  data::write_png(tmp / "t.png", t);
  Image tb = data::decode_image(tmp / "t.png");
  REQUIRE(tb.pixels.size() == 18);
  for (int c = 0; c < 3; c++)
    for (int q = 0; q < 6; q++) {
      int expect = (c * 6 + q) * 14;
      if (c == 0 && q == 0) expect = 0;
      if (c == 2 && q == 5) expect = 255;
      CHECK(int(tb.pixels[size_t(q * 3 + c)]) == expect);
    }
  // Non-finite values are refused, naming the file.
  p[3] = NAN;
  CHECK(contains(error_of([&] { data::write_png(tmp / "nan.png", t); }), "nan.png"));
  CHECK(!fs::exists(tmp / "nan.png"));
  // A folder that does not exist: the error names the path.
  const std::string bad = tmp / "no/such/dir/x.png";
  CHECK(contains(error_of([&] { data::write_png(bad, img); }), bad));

  // The JPEG fixture decodes to its formula, up to JPEG's loss (small on a smooth picture).
  std::vector<uint8_t> jpg = gradient_jpeg();
  Image sj = data::decode_image_bytes(jpg.data(), jpg.size(), kGradientJpeg);
  REQUIRE(sj.height == 16);
  REQUIRE(sj.width == 16);
  double mae = 0;
  int worst = 0;
  for (int y = 0; y < 16; y++)
    for (int x = 0; x < 16; x++)
      for (int c = 0; c < 3; c++) {
        int err = std::abs(int(sj.pixels[size_t((y * 16 + x) * 3 + c)]) - (x * 8 + y * 4 + c * 30));
        mae += err;
        worst = std::max(worst, err);
      }
  CHECK(mae / 768.0 < 3.0);
  CHECK(worst < 12);

  // make_grid: two 1x1 images with padding 1 -> a 3x5 picture, pad value around.
  Tensor two = Tensor::zeros({2, 3, 1, 1});
  two.data<float>()[3] = 0.5f;  // image 1, channel 0
  Tensor grid = data::make_grid(two, 2, 1, 1.0f);
  CHECK(grid.shape() == eng::Shape{3, 3, 5});
  std::vector<float> g = grid.to_vector<float>();
  CHECK(g[0] == 1.0f);
  CHECK(g[1 * 5 + 1] == 0.0f);
  CHECK(g[1 * 5 + 3] == 0.5f);
}

TEST_CASE("hand-made PGM, PPM and BMP decode; gray becomes 3 equal channels") {
  TempDir tmp;
  // PGM (P5): 3 wide, 2 high.
  std::string pgm = "P5\n3 2\n255\n";
  std::vector<uint8_t> pgm_bytes(pgm.begin(), pgm.end());
  for (uint8_t v : {0, 10, 20, 30, 40, 250}) pgm_bytes.push_back(v);
  write_bytes(tmp / "g.pgm", pgm_bytes);
  Image g = data::decode_image(tmp / "g.pgm");
  REQUIRE(g.pixels.size() == 18);
  const uint8_t gray[] = {0, 10, 20, 30, 40, 250};
  for (int i = 0; i < 6; i++)
    for (int c = 0; c < 3; c++) CHECK(g.pixels[size_t(i * 3 + c)] == gray[i]);
  // PPM (P6): 2 wide, 1 high.
  std::string ppm = "P6\n2 1\n255\n";
  std::vector<uint8_t> ppm_bytes(ppm.begin(), ppm.end());
  for (uint8_t v : {1, 2, 3, 200, 100, 50}) ppm_bytes.push_back(v);
  write_bytes(tmp / "c.PPM", ppm_bytes);
  CHECK(data::decode_image(tmp / "c.PPM").pixels == std::vector<uint8_t>{1, 2, 3, 200, 100, 50});
  // BMP, 24-bit, 2x2, rows bottom-up in BGR order, each row padded to 4 bytes.
  std::vector<uint8_t> bmp = {'B', 'M', 70, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0,  // file header (70 bytes, data at 54)
                              40, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 16, 0, 0, 0,
                              0x13, 0x0B, 0, 0, 0x13, 0x0B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  // bottom row: (0,0,255) red, (0,255,0) green; top row: blue, white
  for (uint8_t v : {0, 0, 255, 0, 255, 0, 0, 0}) bmp.push_back(v);
  for (uint8_t v : {255, 0, 0, 255, 255, 255, 0, 0}) bmp.push_back(v);
  write_bytes(tmp / "b.bmp", bmp);
  Image b = data::decode_image(tmp / "b.bmp");
  CHECK(b.pixels == std::vector<uint8_t>{0, 0, 255, 255, 255, 255, 255, 0, 0, 0, 255, 0});
}

TEST_CASE("undecodable files: CorruptImage naming the file; missing file: plain error") {
  TempDir tmp;
  write_text(tmp / "text.jpg", "this is not a picture\n");
  write_bytes(tmp / "empty.png", {});
  data::write_png(tmp / "ok.png", random_image(8, 8, 3));
  std::vector<uint8_t> png = read_bytes(tmp / "ok.png");
  write_bytes(tmp / "cut.png", std::vector<uint8_t>(png.begin(), png.begin() + long(png.size() / 2)));
  for (const char* name : {"text.jpg", "empty.png", "cut.png"}) {
    const std::string path = tmp / name;
    bool corrupt = false;
    std::string msg;
    try {
      data::decode_image(path);
    } catch (const data::CorruptImage& e) {
      corrupt = true;
      msg = e.what();
    }
    CHECK_MESSAGE(corrupt, name);
    CHECK(contains(msg, path));
  }
  CHECK(contains(error_of([&] { data::decode_image(tmp / "text.jpg"); }), "not an image"));
  CHECK(contains(error_of([&] { data::decode_image(tmp / "cut.png"); }), "PNG"));
  const std::string missing = tmp / "missing.jpg";
  bool corrupt = false;
  std::string msg;
  try {
    data::decode_image(missing);
  } catch (const data::CorruptImage&) {
    corrupt = true;
  } catch (const eng::Error& e) {
    msg = e.what();
  }
  CHECK(!corrupt);
  CHECK(contains(msg, missing));
}

// ---- datasets ---------------------------------------------------------------------------------------------

TEST_CASE("ImageFolder: listing, labels, lazy decoding, skipped files and folder errors") {
  TempDir tmp;
  const std::string root = tmp / "root";
  put_png(root + "/b_cls/1.png", random_image(6, 5, 1));
  const std::vector<uint8_t> jpg = gradient_jpeg();
  write_bytes(root + "/b_cls/0.JPG", jpg);
  put_png(root + "/b_cls/sub/2.png", random_image(6, 5, 3));  // nested folders are searched too
  put_png(root + "/a_cls/x.png", random_image(4, 4, 4));
  write_text(root + "/a_cls/notes.txt", "ignored");
  put_png(root + "/a_cls/.hidden.png", random_image(4, 4, 5));
  write_text(root + "/readme.md", "files directly under root are in no class");
  // a truncated JPEG and a text file named .jpg: listed (by extension), fail when decoded
  write_bytes(root + "/a_cls/y_truncated.jpg", std::vector<uint8_t>(jpg.begin(), jpg.begin() + long(jpg.size() * 2 / 3)));
  write_text(root + "/a_cls/z_text.jpeg", "not a jpeg at all");

  data::ImageFolder ds(root);
  CHECK(ds.classes() == std::vector<std::string>{"a_cls", "b_cls"});
  REQUIRE(ds.size() == 6);
  CHECK(ds.ignored_files() == 3);
  const std::vector<std::string> expect = {"a_cls/x.png", "a_cls/y_truncated.jpg", "a_cls/z_text.jpeg",
                                           "b_cls/0.JPG", "b_cls/1.png",           "b_cls/sub/2.png"};
  for (int64_t i = 0; i < 6; i++) {
    CHECK(ds.id(i) == root + "/" + expect[size_t(i)]);
    CHECK(ds.label(i) == (i < 3 ? 0 : 1));
  }
  data::Sample s = ds.get(4);
  CHECK(s.label == 1);
  CHECK(s.image.shape() == eng::Shape{3, 6, 5});
  CHECK(s.id == ds.id(4));
  Tensor expect_t = data::image_to_tensor(random_image(6, 5, 1));
  CHECK(same_bytes(s.image, expect_t));
  for (int64_t bad : {1, 2}) {
    bool corrupt = false;
    std::string msg;
    try {
      ds.get(bad);
    } catch (const data::CorruptImage& e) {
      corrupt = true;
      msg = e.what();
    }
    CHECK(corrupt);
    CHECK(contains(msg, ds.id(bad)));
  }
  CHECK(contains(error_of([&] { ds.get(6); }), "out of range"));

  // class subset and per-class limit
  data::ImageFolderOptions opt;
  opt.classes = {"b_cls"};
  opt.max_per_class = 2;
  data::ImageFolder sub(root, opt);
  CHECK(sub.size() == 2);
  CHECK(sub.classes() == std::vector<std::string>{"b_cls"});
  CHECK(sub.label(0) == 0);
  opt.classes = {"nope"};
  CHECK(contains(error_of([&] { data::ImageFolder x(root, opt); }), root + "/nope"));

  // errors name the folder
  const std::string missing = tmp / "missing_root";
  CHECK(contains(error_of([&] { data::ImageFolder x(missing); }), missing));
  const std::string flat = tmp / "flat";
  put_png(flat + "/img.png", random_image(4, 4, 1));
  std::string msg = error_of([&] { data::ImageFolder x(flat); });
  CHECK(contains(msg, flat));
  CHECK(contains(msg, "no class folders"));
  const std::string with_empty = tmp / "with_empty";
  put_png(with_empty + "/full/img.png", random_image(4, 4, 1));
  write_text(with_empty + "/empty/readme.txt", "no images here");
  msg = error_of([&] { data::ImageFolder x(with_empty); });
  CHECK(contains(msg, with_empty + "/empty"));
  CHECK(contains(msg, "no image files"));
}

TEST_CASE("CIFAR-10 binary and IDX files made by hand") {
  TempDir tmp;
  // Three CIFAR records: label r, pixel bytes (r * 7 + p) mod 256, channel-planar.
  std::vector<uint8_t> bin;
  for (int r = 0; r < 3; r++) {
    bin.push_back(uint8_t(r + 4));
    for (int p = 0; p < 3072; p++) bin.push_back(uint8_t((r * 7 + p) % 256));
  }
  write_bytes(tmp / "data_batch_1.bin", bin);
  data::CifarBinary cifar({tmp / "data_batch_1.bin"});
  REQUIRE(cifar.size() == 3);
  CHECK(cifar.num_classes() == 10);
  data::Sample s = cifar.get(2);
  CHECK(s.label == 6);
  CHECK(s.id == tmp / "data_batch_1.bin" + "#2");
  CHECK(s.image.shape() == eng::Shape{3, 32, 32});
  const float* px = s.image.data<float>();
  CHECK(px[0] == float(14) / 255.0f);
  CHECK(px[1024 + 3] == float((14 + 1024 + 3) % 256) / 255.0f);  // G plane, pixel (0, 3)
  // a size that is not a multiple of 3073
  bin.pop_back();
  write_bytes(tmp / "bad.bin", bin);
  std::string msg = error_of([&] { data::CifarBinary x({tmp / "bad.bin"}); });
  CHECK(contains(msg, tmp / "bad.bin"));
  CHECK(contains(msg, "3073"));
  CHECK(contains(error_of([&] { data::CifarBinary::cifar10(tmp.path.string(), true); }), "data_batch_2.bin"));

  // IDX: 4 images of 2x3 and their labels, uncompressed (gzread reads plain files too).
  std::vector<uint8_t> im = {0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 3};
  for (int i = 0; i < 24; i++) im.push_back(uint8_t(i * 10));
  std::vector<uint8_t> lb = {0, 0, 8, 1, 0, 0, 0, 4, 3, 1, 4, 1};
  write_bytes(tmp / "mn/train-images-idx3-ubyte.gz", im);
  write_bytes(tmp / "mn/train-labels-idx1-ubyte.gz", lb);
  data::IdxDataset idx(tmp / "mn", "train", 3);
  REQUIRE(idx.size() == 3);
  data::Sample m = idx.get(1);
  CHECK(m.label == 1);
  CHECK(m.image.shape() == eng::Shape{3, 2, 3});
  std::vector<float> mv = m.image.to_vector<float>();
  for (int c = 0; c < 3; c++)
    for (int p = 0; p < 6; p++) CHECK(mv[size_t(c * 6 + p)] == float((6 + p) * 10) / 255.0f);
}

TEST_CASE("Fashion-MNIST from Debian") {
  if (data::fashion_mnist_dir().empty()) {
    MESSAGE("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  auto ds = data::fashion_mnist("t10k", 50);
  REQUIRE(ds->size() == 50);
  CHECK(ds->classes().size() == 10);
  CHECK(ds->classes()[9] == "Ankle boot");
  // The same pixels as idx.h's loader (an independent path), copied into three channels.
  data::LabelledImages ref = data::load_mnist_split(data::fashion_mnist_dir(), "t10k", 50);
  const float* r = ref.images.data<float>();
  for (int64_t i : {0, 17, 49}) {
    data::Sample s = ds->get(i);
    CHECK(s.label == ref.labels.data<int64_t>()[i]);
    REQUIRE(s.image.shape() == eng::Shape{3, 28, 28});
    const float* p = s.image.data<float>();
    bool same = true;
    for (int c = 0; c < 3; c++)
      for (int q = 0; q < 784; q++) same = same && p[c * 784 + q] == r[i * 784 + q];
    CHECK(same);
  }
  // Resized to 32x32 for patch size 4 / 8 in the pipeline.
  data::Pipeline p;
  p.add(std::make_shared<data::Resize>(32, 32));
  CHECK(p.apply(ds->get(0).image, 0, 0, 0).shape() == eng::Shape{3, 32, 32});
}

// ---- transforms -------------------------------------------------------------------------------------------

TEST_CASE("flip, center crop and normalize exactly") {
  Tensor img = random_chw(3, 5, 7, 11);
  std::vector<float> v = img.to_vector<float>();
  std::vector<float> f = data::hflip(img).to_vector<float>();
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < 5; y++)
      for (int x = 0; x < 7; x++) CHECK(f[size_t((c * 5 + y) * 7 + x)] == v[size_t((c * 5 + y) * 7 + 6 - x)]);

  // 5x7 -> 3x3: top = round(1) = 1, left = round(2) = 2; 5x7 -> 4x4: top = round(0.5) = 0, left = round(1.5) = 2.
  eng::Generator gen(0);
  struct Case { int64_t ch, cw, top, left; };
  for (Case k : {Case{3, 3, 1, 2}, Case{4, 4, 0, 2}, Case{5, 7, 0, 0}}) {
    Tensor out = data::CenterCrop(k.ch, k.cw).apply(img, gen);
    REQUIRE(out.shape() == eng::Shape{3, k.ch, k.cw});
    std::vector<float> o = out.to_vector<float>();
    for (int c = 0; c < 3; c++)
      for (int y = 0; y < k.ch; y++)
        for (int x = 0; x < k.cw; x++)
          CHECK(o[size_t((c * k.ch + y) * k.cw + x)] == v[size_t((c * 5 + y + k.top) * 7 + x + k.left)]);
  }
  // A crop larger than the image pads with zeros, the image at ((7-5)//2, (9-7)//2) = (1, 1).
  std::vector<float> big = data::CenterCrop(7, 9).apply(img, gen).to_vector<float>();
  CHECK(big[0] == 0.0f);
  CHECK(big[size_t(1 * 9 + 1)] == v[0]);
  CHECK(big[size_t(5 * 9 + 7)] == v[size_t(4 * 7 + 6)]);
  CHECK(big[size_t(6 * 9 + 8)] == 0.0f);

  const std::vector<float> mean = {0.1f, 0.5f, 0.9f}, sd = {0.2f, 0.3f, 0.7f};
  std::vector<float> n = data::Normalize(mean, sd).apply(img, gen).to_vector<float>();
  for (int c = 0; c < 3; c++)
    for (int q = 0; q < 35; q++) CHECK(n[size_t(c * 35 + q)] == (v[size_t(c * 35 + q)] - mean[size_t(c)]) / sd[size_t(c)]);
  // default statistics are ImageNet's, and unnormalize undoes normalize
  data::Normalize def;
  CHECK(def.mean() == std::vector<float>{0.485f, 0.456f, 0.406f});
  CHECK(def.std() == std::vector<float>{0.229f, 0.224f, 0.225f});
  std::vector<float> round = data::unnormalize(def.apply(img, gen)).to_vector<float>();
  for (size_t i = 0; i < v.size(); i++) CHECK(std::fabs(round[i] - v[i]) < 1e-6f);
  CHECK(contains(error_of([&] { data::Normalize({0.5f}, {0.5f}).apply(img, gen); }), "channels"));
}

TEST_CASE("resize: constant stays constant, hand values, and an f64 2-D reference") {
  // A constant image stays exactly constant, up or down, any filter.
  Tensor flat = Tensor::full({3, 9, 13}, 0.3f);
  for (auto ip : {data::Interpolation::Bilinear, data::Interpolation::Bicubic})
    for (auto size : {std::make_pair(4, 5), std::make_pair(20, 31), std::make_pair(9, 13), std::make_pair(1, 1)})
      for (bool aa : {true, false}) {
        std::vector<float> o = data::resize(flat, size.first, size.second, ip, aa).to_vector<float>();
        CHECK(std::all_of(o.begin(), o.end(), [](float x) { return x == 0.3f; }));
      }
  // Identity size is the identity.
  Tensor img = random_chw(3, 6, 10, 5);
  CHECK(same_bytes(data::resize(img, 6, 10), img));
  CHECK(same_bytes(data::resize(img, 6, 10, data::Interpolation::Bicubic), img));

  // 2x bilinear upsampling of the row [a, b]: a, 3/4 a + 1/4 b, 1/4 a + 3/4 b, b (half-pixel centres).
  Tensor row = Tensor::from_vector(std::vector<float>{0.2f, 1.0f}, {1, 1, 2});
  std::vector<float> up = data::resize(row, 1, 4).to_vector<float>();
  CHECK(up[0] == doctest::Approx(0.2).epsilon(1e-7));
  CHECK(up[1] == doctest::Approx(0.4).epsilon(1e-7));
  CHECK(up[2] == doctest::Approx(0.8).epsilon(1e-7));
  CHECK(up[3] == doctest::Approx(1.0).epsilon(1e-7));
  // 2x bilinear downsampling with antialias: interior weights 1/8, 3/8, 3/8, 1/8 (PIL's); without: pair means.
  Tensor line = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}, {1, 1, 8});
  std::vector<float> aa = data::resize(line, 1, 4).to_vector<float>();
  CHECK(aa[1] == doctest::Approx((1 * 1 + 2 * 3 + 3 * 3 + 4 * 1) / 8.0));
  CHECK(aa[2] == doctest::Approx((3 * 1 + 4 * 3 + 5 * 3 + 6 * 1) / 8.0));
  CHECK(aa[0] == doctest::Approx((0 * 3 + 1 * 3 + 2 * 1) / 7.0));  // edge: taps 0,1,2, renormalised
  std::vector<float> plain = data::resize(line, 1, 4, data::Interpolation::Bilinear, false).to_vector<float>();
  for (int o = 0; o < 4; o++) CHECK(plain[size_t(o)] == doctest::Approx(2 * o + 0.5));

  // Against the f64 2-D reference, for shrinking, enlarging, odd ratios, both filters, with and without aa.
  Tensor pic = random_chw(3, 11, 14, 9);
  struct Sz { int64_t h, w; };
  for (auto ip : {data::Interpolation::Bilinear, data::Interpolation::Bicubic})
    for (bool antialias : {true, false})
      for (Sz sz : {Sz{5, 6}, Sz{23, 31}, Sz{8, 20}, Sz{3, 3}}) {
        std::vector<float> got = data::resize(pic, sz.h, sz.w, ip, antialias).to_vector<float>();
        std::vector<double> ref = ref_resize(pic, sz.h, sz.w, ip, antialias);
        double worst = 0;
        for (size_t i = 0; i < ref.size(); i++) worst = std::max(worst, std::fabs(double(got[i]) - ref[i]));
        CHECK_MESSAGE(worst < 1e-6, "resize to " << sz.h << "x" << sz.w << " bicubic=" << int(ip) << " aa=" << antialias);
      }
}

TEST_CASE("RandomResizedCrop: output size, bounds, determinism per key, fallback") {
  Tensor img = random_chw(3, 32, 32, 3);
  data::RandomResizedCrop rrc(32, 32);
  for (int64_t index = 0; index < 20; index++) {
    eng::Generator g1 = data::augment_generator(42, 3, index, 0), g2 = data::augment_generator(42, 3, index, 0);
    Tensor a = rrc.apply(img, g1), b = rrc.apply(img, g2);
    CHECK(a.shape() == eng::Shape{3, 32, 32});
    CHECK(same_bytes(a, b));
    CHECK(g1.offset() - data::augment_generator(42, 3, index, 0).offset() <= data::kAugmentCountersPerStep);
  }
  // The boxes keep to the image, to the area range (up to rounding) and to the aspect range.
  eng::Generator gen(5);
  int distinct_sizes = 0;
  std::set<std::pair<int64_t, int64_t>> sizes;
  for (int t = 0; t < 500; t++) {
    data::CropBox box = data::random_resized_crop_box(40, 60, {0.2, 1.0}, {3.0 / 4.0, 4.0 / 3.0}, gen);
    CHECK(box.top >= 0);
    CHECK(box.left >= 0);
    CHECK(box.top + box.height <= 40);
    CHECK(box.left + box.width <= 60);
    const double area = double(box.height * box.width) / (40.0 * 60.0);
    CHECK(area > 0.17);
    const double ratio = double(box.width) / double(box.height);
    CHECK(ratio > 0.70);
    CHECK(ratio < 1.42);
    sizes.insert({box.height, box.width});
  }
  distinct_sizes = int(sizes.size());
  CHECK(distinct_sizes > 50);
  // A tall, narrow image where no sampled crop fits: the centre crop of the whole image clamped to ratio 1.
  data::CropBox fb = data::random_resized_crop_box(100, 10, {0.9, 1.0}, {1.0, 1.0}, gen);
  CHECK(fb == data::CropBox{45, 0, 10, 10});

  // Pipeline: same (seed, epoch, index) -> same bytes; another epoch or index -> another view.
  data::Pipeline p = data::mae_pretrain_pipeline(32);
  CHECK(p.size() == 3);
  Tensor x = p.apply(img, 7, 2, 5), y = p.apply(img, 7, 2, 5);
  CHECK(same_bytes(x, y));
  CHECK(!same_bytes(x, p.apply(img, 7, 3, 5)));
  CHECK(!same_bytes(x, p.apply(img, 7, 2, 6)));
  CHECK(!same_bytes(x, p.apply(img, 8, 2, 5)));
  // Flip takes about half the time.
  data::RandomHorizontalFlip flip(0.5);
  int flipped = 0;
  for (int64_t i = 0; i < 400; i++) {
    eng::Generator g = data::augment_generator(1, 0, i, 1);
    flipped += same_bytes(flip.apply(img, g), img) ? 0 : 1;
  }
  CHECK(flipped > 160);
  CHECK(flipped < 240);
  // eval pipeline on a 32x32 image with crop fraction 1: just the normalisation.
  data::Pipeline ev = data::eval_pipeline(32);
  eng::Generator g0(0);
  CHECK(same_bytes(ev.apply(img, 0, 0, 0), data::Normalize().apply(img, g0)));
}

TEST_CASE("transforms: RandomCrop with padding is a window of the zero-padded image, every offset reachable") {
  // A 3x5x4 image of distinct values; the reference pads it in f64 and reads the window at every offset.
  const int64_t h = 5, w = 4, pad = 2, size = 4;
  std::vector<float> v(size_t(3 * h * w));
  for (size_t i = 0; i < v.size(); i++) v[i] = float(i + 1) / 100.0f;
  Tensor img = Tensor::from_vector(v, {3, h, w});
  data::RandomCrop rc(size, pad);
  std::set<std::pair<int64_t, int64_t>> offsets;
  for (int64_t i = 0; i < 400; i++) {
    eng::Generator g = data::augment_generator(3, 0, i, 0);
    std::vector<float> got = rc.apply(img, g).to_vector<float>();
    REQUIRE(got.size() == size_t(3 * size * size));
    // Find the offset (top, left) in [0, h + 2 pad - size] x [0, w + 2 pad - size] whose padded window matches.
    bool found = false;
    for (int64_t t = 0; t <= h + 2 * pad - size && !found; t++)
      for (int64_t l = 0; l <= w + 2 * pad - size && !found; l++) {
        bool same = true;
        for (int64_t c = 0; c < 3 && same; c++)
          for (int64_t y = 0; y < size && same; y++)
            for (int64_t x = 0; x < size && same; x++) {
              const int64_t sy = t + y - pad, sx = l + x - pad;
              const double want = (sy < 0 || sy >= h || sx < 0 || sx >= w) ? 0.0 : double(v[size_t((c * h + sy) * w + sx)]);
              same = double(got[size_t((c * size + y) * size + x)]) == want;
            }
        if (same) offsets.insert({t, l}), found = true;
      }
    CHECK(found);
  }
  CHECK(offsets.size() == size_t((h + 2 * pad - size + 1) * (w + 2 * pad - size + 1)));  // 4 x 3 positions all drawn
  eng::Generator a = data::augment_generator(3, 0, 7, 0), b = data::augment_generator(3, 0, 7, 0);
  CHECK(same_bytes(rc.apply(img, a), rc.apply(img, b)));
  CHECK(error_of([&] { data::RandomCrop(10, 1).apply(img, a); }).find("does not fit") != std::string::npos);
  CHECK(error_of([] { data::RandomCrop(0, 1); }).find("RandomCrop") != std::string::npos);
}

// ---- loader -------------------------------------------------------------------------------------------------

TEST_CASE("loader: same batches with 0, 1 and 3 workers; epoch order is the seeded permutation") {
  auto ds = small_tensor_dataset(37);
  data::LoaderOptions opt;
  opt.batch_size = 5;
  opt.seed = 99;
  opt.drop_last = false;
  std::vector<std::vector<data::Batch>> runs;
  for (int workers : {1, 3, 0}) {
    opt.num_workers = workers;
    data::Loader loader(ds, small_aug_pipeline(), opt);
    CHECK(loader.batches_per_epoch() == 8);
    runs.push_back(whole_epoch(loader, 4));
  }
  for (size_t r = 1; r < runs.size(); r++) {
    REQUIRE(runs[r].size() == runs[0].size());
    for (size_t k = 0; k < runs[0].size(); k++) {
      CHECK(runs[r][k].batch == int64_t(k));
      CHECK(same_bytes(runs[r][k].images, runs[0][k].images));
      CHECK(same_bytes(runs[r][k].labels, runs[0][k].labels));
      CHECK(same_bytes(runs[r][k].indices, runs[0][k].indices));
    }
  }
  const auto& b0 = runs[0];
  CHECK(b0[0].images.shape() == eng::Shape{5, 3, 6, 6});
  CHECK(b0.back().images.shape() == eng::Shape{2, 3, 6, 6});  // 37 = 7 * 5 + 2
  // Every index exactly once, in the order of Generator(seed, stream = epoch).permutation(n).
  std::vector<int64_t> idx = all_indices(b0);
  std::vector<int64_t> perm = eng::Generator(99, 4).permutation(37).to_vector<int64_t>();
  CHECK(idx == perm);
  std::vector<int64_t> sorted = idx;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 37; i++) CHECK(sorted[size_t(i)] == i);
  // Labels and images belong to their index: image = pipeline(dataset[index]) with the key (seed, epoch, index).
  const data::Pipeline pipe = small_aug_pipeline();
  for (int64_t j = 0; j < 5; j++) {
    const int64_t i = b0[1].indices.data<int64_t>()[j];
    CHECK(b0[1].labels.data<int64_t>()[j] == i % 5);
    CHECK(same_bytes(b0[1].images.select(0, j), pipe.apply(ds->get(i).image, 99, 4, i)));
  }
  // Another epoch: another order; another seed: another order.
  opt.num_workers = 2;
  data::Loader other(ds, small_aug_pipeline(), opt);
  CHECK(all_indices(whole_epoch(other, 5)) != idx);
  opt.seed = 100;
  data::Loader reseeded(ds, small_aug_pipeline(), opt);
  CHECK(all_indices(whole_epoch(reseeded, 4)) != idx);
  // shuffle off: 0..n-1
  opt.shuffle = false;
  data::Loader plain(ds, small_aug_pipeline(), opt);
  std::vector<int64_t> in_order = all_indices(whole_epoch(plain, 0));
  for (int64_t i = 0; i < 37; i++) CHECK(in_order[size_t(i)] == i);
}

TEST_CASE("loader: drop_last, resume mid-epoch, and sharding over ranks") {
  auto ds = small_tensor_dataset(23);
  data::LoaderOptions opt;
  opt.batch_size = 4;
  opt.seed = 3;
  opt.num_workers = 2;
  opt.drop_last = true;
  {
    data::Loader loader(ds, small_aug_pipeline(), opt);
    CHECK(loader.batches_per_epoch() == 5);  // 23 // 4
    std::vector<data::Batch> full = whole_epoch(loader, 1);
    CHECK(full.size() == 5);
    for (auto& b : full) CHECK(b.images.size(0) == 4);
    // Resuming at batch 3 gives batches 3 and 4 again, the same bytes.
    loader.start_epoch(1, 3);
    data::Batch b;
    for (int64_t k = 3; k < 5; k++) {
      REQUIRE(loader.next(b));
      CHECK(b.batch == k);
      CHECK(same_bytes(b.images, full[size_t(k)].images));
    }
    CHECK(!loader.next(b));
    CHECK(!loader.next(b));
  }
  // Three ranks, drop_last = false: S = ceil(23 / 3) = 8 each, padded with the start of the order;
  // the same number of batches everywhere and the union is everything.
  for (bool drop : {false, true}) {
    opt.drop_last = drop;
    opt.batch_size = 3;
    std::vector<int64_t> together;
    std::vector<int64_t> counts;
    for (int r = 0; r < 3; r++) {
      opt.rank = r;
      opt.world_size = 3;
      data::Loader loader(ds, small_aug_pipeline(), opt);
      std::vector<data::Batch> bs = whole_epoch(loader, 2);
      counts.push_back(int64_t(bs.size()));
      std::vector<int64_t> mine = all_indices(bs);
      CHECK(int64_t(mine.size()) == (drop ? 6 : 8));  // drop: S = 7, two batches of 3; keep: S = 8, 3 batches
      const std::vector<int64_t> order = loader.epoch_order(2);
    CHECK(mine == std::vector<int64_t>(order.begin(), order.begin() + long(mine.size())));
      together.insert(together.end(), mine.begin(), mine.end());
    }
    CHECK(counts[0] == counts[1]);
    CHECK(counts[1] == counts[2]);
    std::set<int64_t> uniq(together.begin(), together.end());
    if (!drop) {
      CHECK(together.size() == 24);  // one index repeated as padding
      CHECK(uniq.size() == 23);
    } else {
      CHECK(uniq.size() == together.size());  // disjoint shards
    }
  }
  // A batch larger than a rank's share with drop_last is an error, not a silent empty epoch.
  opt.rank = 0;
  opt.world_size = 1;
  opt.drop_last = true;
  opt.batch_size = 24;
  CHECK(contains(error_of([&] { data::Loader x(ds, small_aug_pipeline(), opt); }), "batch size 24"));
}

TEST_CASE("loader: corrupt images are skipped deterministically and counted; strict throws") {
  auto base = small_tensor_dataset(30);
  const std::set<int64_t> corrupt = {2, 11, 12, 29};
  auto ds = std::make_shared<FlakyDataset>(base, corrupt);
  data::LoaderOptions opt;
  opt.batch_size = 4;
  opt.seed = 8;
  opt.drop_last = false;
  std::vector<std::vector<data::Batch>> runs;
  for (int workers : {1, 3}) {
    opt.num_workers = workers;
    data::Loader loader(ds, small_aug_pipeline(), opt);
    runs.push_back(whole_epoch(loader, 0));
    CHECK(loader.skipped() == 4);
    CHECK(loader.skipped_total() == 4);
    std::vector<std::string> ids = loader.skipped_ids();
    std::set<std::string> id_set(ids.begin(), ids.end());
    for (int64_t c : corrupt) CHECK(id_set.count("flaky/" + std::to_string(c) + ".jpg") == 1);
    const std::string summary = loader.skip_summary();
    CHECK(contains(summary, "4 corrupt images skipped"));
    CHECK(contains(summary, "flaky/11.jpg"));
  }
  REQUIRE(runs[0].size() == runs[1].size());
  std::vector<int64_t> idx = all_indices(runs[0]);
  CHECK(idx.size() == 30);  // every batch stays full
  std::set<int64_t> seen(idx.begin(), idx.end());
  for (int64_t c : corrupt) CHECK(seen.count(c) == 0);
  CHECK(seen.size() == 26);  // every good image is there; 4 appear twice
  for (size_t k = 0; k < runs[0].size(); k++) {
    CHECK(same_bytes(runs[0][k].images, runs[1][k].images));
    CHECK(same_bytes(runs[0][k].indices, runs[1][k].indices));
  }

  // Strict mode: the first corrupt image in batch order is thrown, with its id; then the epoch is over.
  opt.strict = true;
  opt.num_workers = 2;
  data::Loader strict(ds, small_aug_pipeline(), opt);
  std::vector<int64_t> order = strict.epoch_order(0);
  int64_t first_bad_pos = 0;
  while (!corrupt.count(order[size_t(first_bad_pos)])) first_bad_pos++;
  strict.start_epoch(0);
  data::Batch b;
  int64_t delivered = 0;
  std::string msg;
  bool was_corrupt = false;
  try {
    while (strict.next(b)) delivered++;
  } catch (const data::CorruptImage& e) {
    was_corrupt = true;
    msg = e.what();
  }
  CHECK(was_corrupt);
  CHECK(delivered == first_bad_pos / 4);
  CHECK(contains(msg, "flaky/" + std::to_string(order[size_t(first_bad_pos)]) + ".jpg"));
  CHECK(contains(error_of([&] { strict.next(b); }), "earlier error"));
  strict.start_epoch(1);  // usable again

  // A real ImageFolder with a truncated JPEG and a text file named .jpg.
  TempDir tmp;
  const std::string root = tmp / "imgs";
  const std::vector<uint8_t> jpg = gradient_jpeg();
  for (int i = 0; i < 6; i++) write_bytes(root + "/c" + std::to_string(i % 2) + "/" + std::to_string(i) + ".jpg", jpg);
  write_bytes(root + "/c0/0.jpg", std::vector<uint8_t>(jpg.begin(), jpg.begin() + long(jpg.size() / 2)));
  write_text(root + "/c1/3.jpg", "plain text");
  auto folder = std::make_shared<data::ImageFolder>(root);
  data::Pipeline resize8;
  resize8.add(std::make_shared<data::Resize>(8, 8));
  opt.strict = false;
  opt.batch_size = 2;
  data::Loader fl(folder, resize8, opt);
  std::vector<data::Batch> fb = whole_epoch(fl, 0);
  CHECK(fb.size() == 3);
  CHECK(fl.skipped() == 2);
  CHECK(contains(fl.skip_summary(), root + "/c0/0.jpg"));
  CHECK(contains(fl.skip_summary(), root + "/c1/3.jpg"));

  // Every image corrupt: an error, not an endless search.
  auto all_bad = std::make_shared<FlakyDataset>(base, std::set<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                                         15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
                                                                         27, 28, 29});
  data::Loader hopeless(all_bad, small_aug_pipeline(), opt);
  hopeless.start_epoch(0);
  CHECK(contains(error_of([&] { hopeless.next(b); }), "corrupt"));
}

TEST_CASE("loader: other errors propagate in order; mixed sizes; clean shutdown mid-epoch") {
  auto base = small_tensor_dataset(40);
  data::LoaderOptions opt;
  opt.batch_size = 4;
  opt.shuffle = false;
  opt.num_workers = 3;
  // index 22 cannot be read: batches 0..4 come out, batch 5 throws (even if a later batch finished first).
  data::Loader loader(std::make_shared<FlakyDataset>(base, std::set<int64_t>{}, 22), small_aug_pipeline(), opt);
  loader.start_epoch(0);
  data::Batch b;
  int64_t delivered = 0;
  std::string msg;
  try {
    while (loader.next(b)) delivered++;
  } catch (const data::CorruptImage&) {
    msg = "wrong type";
  } catch (const eng::Error& e) {
    msg = e.what();
  }
  CHECK(delivered == 5);
  CHECK(contains(msg, "flaky/22.jpg"));

  // Images of different sizes without a resize: an error naming both.
  TempDir tmp;
  put_png(tmp / "r/a/0.png", random_image(4, 4, 1));
  put_png(tmp / "r/a/1.png", random_image(5, 4, 2));
  opt.drop_last = false;
  data::Loader mixed(std::make_shared<data::ImageFolder>(tmp / "r"), data::Pipeline(), opt);
  mixed.start_epoch(0);
  msg = error_of([&] { mixed.next(b); });
  CHECK(contains(msg, "0.png"));
  CHECK(contains(msg, "1.png"));

  // Slow images (2 ms each, 10 ms a batch): destroying the loader mid-epoch, right after start, or before
  // any epoch returns promptly (at most one image per worker is finished first).
  auto slow = std::make_shared<FlakyDataset>(base, std::set<int64_t>{}, -1, 2000);
  for (int variant = 0; variant < 3; variant++) {
    auto t0 = std::chrono::steady_clock::now();
    {
      data::Loader l(slow, small_aug_pipeline(), opt);
      if (variant >= 1) l.start_epoch(0);
      if (variant == 2) {
        REQUIRE(l.next(b));
        REQUIRE(l.next(b));
      }
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    CHECK_MESSAGE(ms < 500.0, "variant " << variant << " took " << ms << " ms");
  }
  // Starting a new epoch in the middle of one abandons the old one cleanly.
  data::Loader l(slow, small_aug_pipeline(), opt);
  l.start_epoch(0);
  REQUIRE(l.next(b));
  l.start_epoch(1);
  REQUIRE(l.next(b));
  CHECK(b.epoch == 1);
  CHECK(b.batch == 0);
}

TEST_CASE("loader on real CIFAR-10 JPEGs with the MAE pipeline") {
  const std::string dir = std::string(kSharedData) + "/cifar10/test";
  if (!fs::exists(dir)) {
    MESSAGE("skipped: " << dir << " is absent");
    return;
  }
  data::ImageFolderOptions fo;
  fo.max_per_class = 40;
  auto ds = std::make_shared<data::ImageFolder>(dir, fo);
  CHECK(ds->num_classes() == 10);
  CHECK(ds->classes()[0] == "airplane");
  REQUIRE(ds->size() == 400);
  data::LoaderOptions opt;
  opt.batch_size = 64;
  opt.seed = 1;
  opt.num_workers = 2;
  data::Loader loader(ds, data::mae_pretrain_pipeline(32), opt);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<data::Batch> batches = whole_epoch(loader, 0);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(batches.size() == 6);
  CHECK(loader.skipped() == 0);
  // Normalised with the ImageNet statistics: the mean over a batch is near 0 and the values are finite.
  std::vector<float> v = batches[0].images.to_vector<float>();
  double mean = 0;
  bool finite = true;
  for (float x : v) {
    mean += x;
    finite = finite && std::isfinite(x);
  }
  CHECK(finite);
  CHECK(std::fabs(mean / double(v.size())) < 0.6);
  CHECK(batches[0].images.shape() == eng::Shape{64, 3, 32, 32});
  CHECK(contains(loader.batch_ids(batches[0], 2), dir));
  MESSAGE("CIFAR-10 JPEG decode + RandomResizedCrop + flip + normalize, 2 workers: "
          << int(384 / s) << " images/s");
}

}  // TEST_SUITE
