// make_data_seeds.cpp: the seed corpora of the targets other than safetensors, made from real files:
//   make_data_seeds OUT DATA_ROOT FASHION_MNIST_DIR
// DATA_ROOT is the shared image folder (cifar10/, tiny-imagenet-32/), FASHION_MNIST_DIR Debian's Fashion-MNIST;
// either may be missing, then the seeds that come from it are left out (with a note). Every seed is small: a few
// real 32x32 photographs as JPEG (as stored), PNG, PPM, PGM and BMP; CIFAR-10 binary records made of those
// photographs; crops of the Fashion-MNIST IDX files (3 images / 3 labels, plain and gzipped); cluster files our own
// writers make from the photographs' pixels; run configs as options_to_json writes them; flag lists.
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "data/idx.h"
#include "data/image.h"
#include "moce/cluster/io.h"
#include "moce/train/pretrain_config.h"

namespace fs = std::filesystem;

namespace {

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  if (!f.good()) throw std::runtime_error("cannot write " + p.string());
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string gzip(const std::string& raw) {
  uLongf cap = compressBound(uLong(raw.size())) + 64;
  std::string out(cap, '\0');
  z_stream z{};
  deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // +16: a gzip wrapper, as the .gz files have
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = uInt(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = uInt(cap);
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }
std::string le32(uint32_t v) { return {char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; }
template <size_t N>
std::string nul_list(const char (&s)[N]) { return std::string(s, N - 1); }  // keeps the NULs

std::string le16(uint16_t v) { return {char(v), char(v >> 8)}; }

std::string ppm(const data::Image& im, bool gray) {
  std::string s = std::string(gray ? "P5\n" : "P6\n") + std::to_string(im.width) + " " + std::to_string(im.height) + "\n255\n";
  for (size_t i = 0; i < im.pixels.size(); i += 3)
    if (gray) s.push_back(char((im.pixels[i] + im.pixels[i + 1] + im.pixels[i + 2]) / 3));
    else s.append(reinterpret_cast<const char*>(&im.pixels[i]), 3);
  return s;
}

std::string bmp(const data::Image& im) {  // 24-bit bottom-up BMP, rows padded to 4 bytes
  const uint32_t row = uint32_t((im.width * 3 + 3) / 4 * 4), data = row * uint32_t(im.height);
  std::string s = "BM" + le32(54 + data) + le32(0) + le32(54) + le32(40) + le32(uint32_t(im.width)) +
                  le32(uint32_t(im.height)) + le16(1) + le16(24) + le32(0) + le32(data) + le32(2835) + le32(2835) +
                  le32(0) + le32(0);
  for (int64_t y = im.height - 1; y >= 0; y--) {
    std::string r;
    for (int64_t x = 0; x < im.width; x++) {
      const uint8_t* p = &im.pixels[size_t((y * im.width + x) * 3)];
      r += {char(p[2]), char(p[1]), char(p[0])};
    }
    r.resize(row, '\0');
    s += r;
  }
  return s;
}

// CIFAR-10 record: label byte, then the R, G and B planes.
std::string cifar_record(const data::Image& im, uint8_t label) {
  std::string s(1, char(label));
  for (int c = 0; c < 3; c++)
    for (int64_t p = 0; p < 32 * 32; p++) s.push_back(char(im.pixels[size_t(p * 3 + c)]));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: make_data_seeds OUT DATA_ROOT FASHION_MNIST_DIR\n";
    return 2;
  }
  const fs::path out = argv[1], data_root = argv[2], fmnist = argv[3];
  for (const char* t : {"image", "idx", "cifar", "run_config", "cluster", "cli"}) fs::create_directories(out / t);

  // Real photographs: the first image of four CIFAR-10 classes and two Tiny-ImageNet ones.
  std::vector<fs::path> photos;
  for (const char* c : {"cifar10/train/airplane", "cifar10/train/cat", "cifar10/test/ship", "cifar10/test/frog",
                        "tiny-imagenet-32/train/n01443537", "tiny-imagenet-32/val/n01443537"}) {
    const fs::path dir = data_root / c;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (!files.empty()) photos.push_back(files.front());
  }
  std::vector<data::Image> images;
  for (size_t i = 0; i < photos.size(); i++) {
    data::Image im = data::decode_image(photos[i].string());
    images.push_back(im);
    const std::string stem = "photo" + std::to_string(i);
    fs::copy_file(photos[i], out / "image" / (stem + ".jpg"), fs::copy_options::overwrite_existing);
    if (i < 2) {
      data::write_png((out / "image" / (stem + ".png")).string(), im);
      write_bytes(out / "image" / (stem + ".ppm"), ppm(im, false));
      write_bytes(out / "image" / (stem + ".pgm"), ppm(im, true));
      write_bytes(out / "image" / (stem + ".bmp"), bmp(im));
    }
  }
  if (images.empty()) std::cerr << "make_data_seeds: no photographs under " << data_root << ": image and cifar seeds left out\n";

  // CIFAR: the first byte of an input picks the class list (0: CIFAR-10's ten names); then 1 or 3 records.
  for (size_t k = 0; k + 3 <= images.size() && k < 2; k++) {
    write_bytes(out / "cifar" / ("one" + std::to_string(k)), std::string(1, '\0') + cifar_record(images[k], uint8_t(3 + k)));
    write_bytes(out / "cifar" / ("three" + std::to_string(k)),
                std::string(1, char(10)) + cifar_record(images[k], 0) + cifar_record(images[k + 1], 9) + cifar_record(images[k + 2], 5));
  }

  // IDX: headers and the first 3 items of the real files, plain and gzipped.
  for (const char* name : {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    const fs::path f = fmnist / name;
    std::error_code ec;
    if (!fs::exists(f, ec)) {
      std::cerr << "make_data_seeds: " << f << " is missing: IDX seeds left out\n";
      continue;
    }
    data::IdxArray a = data::read_idx(f.string());
    size_t item = 1;
    for (size_t i = 1; i < a.dims.size(); i++) item *= size_t(a.dims[i]);
    std::string raw = nul_list("\0\0\x08") + char(a.dims.size()) + be32(3);
    for (size_t i = 1; i < a.dims.size(); i++) raw += be32(uint32_t(a.dims[i]));
    raw.append(reinterpret_cast<const char*>(a.bytes.data()), 3 * item);
    const std::string stem = a.dims.size() == 3 ? "images3" : "labels3";
    write_bytes(out / "idx" / stem, raw);
    write_bytes(out / "idx" / (stem + ".gz"), gzip(raw));
  }

  // Cluster files from our own writers: features = the photographs' mean colours per image quarter.
  {
    const fs::path tmp = out / "cluster-tmp";
    fs::create_directories(tmp);
    const int64_t n = std::max<int64_t>(int64_t(images.size()), 2), d = 4;
    std::vector<float> feats;
    for (int64_t r = 0; r < n; r++)
      for (int64_t c = 0; c < d; c++)
        feats.push_back(images.empty() ? float(r + c) : float(images[size_t(r) % images.size()].pixels[size_t(c * 97)]) / 255.f);
    eng::Tensor ft = eng::Tensor::from_vector(feats, {n, d});
    moce::cluster::FeatureBank bank;
    bank.n = n;
    bank.d = d;
    bank.data = ft.raw_data();
    bank.owner = ft.storage();
    for (int64_t r = 0; r < n; r++) {
      bank.image_index.push_back(r * 3);
      bank.paths.push_back(r < int64_t(photos.size()) ? photos[size_t(r)].filename().string() : "row" + std::to_string(r));
    }
    bank.checkpoint_identity = "checkpoint-last.safetensors bytes=1 crc32=00000000";
    moce::cluster::write_bank((tmp / "bank.safetensors").string(), bank);
    const std::string paths = read_bytes(tmp / "bank.safetensors.paths");
    const std::string bank_bytes = read_bytes(tmp / "bank.safetensors");
    // kind byte 2 (mapped) and 3 (copied); then the paths file's length (255: none).
    for (char kind : {char(2), char(3)})
      write_bytes(out / "cluster" / (std::string("bank") + char('0' + kind)), std::string(1, kind) +
                  std::string(1, char(std::min<size_t>(paths.size(), 254))) + bank_bytes + paths.substr(0, 254));
    moce::cluster::ClusterConfig cfg;
    cfg.clusters = 2;
    moce::cluster::write_centroids((tmp / "centroids.safetensors").string(),
                                   eng::Tensor::from_vector(std::vector<float>(feats.begin(), feats.begin() + 2 * d), {2, d}),
                                   cfg, bank.checkpoint_identity);
    write_bytes(out / "cluster" / "centroids", std::string(1, '\0') + read_bytes(tmp / "centroids.safetensors"));
    moce::cluster::Assignment a;
    for (int64_t r = 0; r < n; r++) {
      a.balanced.push_back(int32_t(r % 2));
      a.plain.push_back(int32_t((r + 1) % 2));
    }
    moce::cluster::write_assignments((tmp / "assignments.safetensors").string(), bank, a, 2);
    write_bytes(out / "cluster" / "assignments", std::string(1, '\1') + read_bytes(tmp / "assignments.safetensors"));
    write_bytes(out / "cluster" / "clusters.json",
                std::string(1, '\4') + nlohmann::json{{"images", n}, {"dim", d}, {"clusters", 2}, {"pool", "cls"},
                                                      {"config", moce::cluster::config_to_json(cfg)}}.dump(2));
    fs::remove_all(tmp);
  }

  // Run configs: the "config" metadata of a pre-training checkpoint and of a MoCE one.
  {
    moce::PretrainOptions o;
    write_bytes(out / "run_config" / "pretrain.json", nlohmann::json{{"run", moce::options_to_json(o)}}.dump());
    o.method = "moce";
    o.init = "runs/mae/checkpoint-last.safetensors";
    o.clusters = "runs/cluster";
    o.experts.moe_blocks = {10, 11};
    write_bytes(out / "run_config" / "moce.json", nlohmann::json{{"run", moce::options_to_json(o)}}.dump(2));
  }

  // Flag lists, NUL-separated (after "moce pretrain").
  const std::vector<std::string> lists = {
      nul_list("--data\0fashion-mnist\0--epochs\0002\0--batch=64\0--base-lr\0001e-3\0--strict"),
      nul_list("--resume\0runs/x\0--epochs\0009\0--device\0cpu"),
      nul_list("--profile-steps\0003:7\0--moe-blocks\00010,11\0--no-norm-pix-loss=true\0--seed\0-1"),
      nul_list("--limit\0-5\0--clip-grad\0nan\0--ratio=inf\0--warmup-epochs\0001"),
  };
  for (size_t i = 0; i < lists.size(); i++) write_bytes(out / "cli" / ("args" + std::to_string(i)), lists[i]);
  std::cout << "make_data_seeds: " << photos.size() << " photographs -> seeds in " << out << "\n";
  return 0;
}
