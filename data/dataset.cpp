// dataset.cpp: ImageFolder listing, IDX and CIFAR-10 binary readers, in-memory and subset datasets.
#include "data/dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <map>
#include <system_error>
#include <utility>

#include "data/idx.h"
#include "engine/error.h"

namespace fs = std::filesystem;

namespace data {

void Dataset::check_index(int64_t i) const {
  ENG_CHECK(i >= 0 && i < size(), "{}: index {} out of range [0, {})", describe(), i, size());
}

// ---- ImageFolder ------------------------------------------------------------------------------------------

bool is_image_extension(const std::string& ext) {
  std::string e = (!ext.empty() && ext[0] == '.') ? ext.substr(1) : ext;
  for (char& ch : e) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return e == "jpg" || e == "jpeg" || e == "png" || e == "ppm" || e == "pgm" || e == "bmp";
}

static bool is_hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

namespace {

// How deep below a class folder the scan goes: far more than any real layout, few enough that a loop the
// device/inode check cannot see (a bind mount shows new inodes) ends with an error instead of a hang.
constexpr int kMaxScanDepth = 32;

// A file or folder by device and inode: what a symlink or hard link cannot disguise.
using FileKey = std::pair<uint64_t, uint64_t>;

struct ClassScan {
  std::map<FileKey, std::string> folders, image_keys;  // scanned folders and listed images -> the path taken
  std::vector<std::pair<std::string, FileKey>> images;  // in traversal order
  std::vector<FileKey> ancestors;               // the folders from the class folder down to the current one
  std::vector<std::string> notes;
  int64_t ignored = 0;
};

void scan_folder(const fs::path& dir, int depth, ClassScan& scan) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) entries.push_back(it->path());
  ENG_CHECK(!ec, "ImageFolder: cannot list {} ({})", dir.string(), ec.message());
  std::sort(entries.begin(), entries.end());  // the same traversal, so the same path kept for a duplicate, every time
  for (const fs::path& p : entries) {
    if (is_hidden(p)) {
      scan.ignored++;
      continue;
    }
    struct stat st;
    if (::stat(p.c_str(), &st) != 0) {
      scan.notes.push_back(fmt::format("{}: a broken link or an unreadable entry ({}), skipped", p.string(),
                                       std::strerror(errno)));
      scan.ignored++;
      continue;
    }
    const FileKey key{uint64_t(st.st_dev), uint64_t(st.st_ino)};
    if (S_ISDIR(st.st_mode)) {
      if (std::find(scan.ancestors.begin(), scan.ancestors.end(), key) != scan.ancestors.end()) {
        scan.notes.push_back(fmt::format("{}: a link back to a folder above it (a loop), skipped", p.string()));
        continue;
      }
      if (auto [it, fresh] = scan.folders.emplace(key, p.string()); !fresh) {
        scan.notes.push_back(fmt::format("{}: a second path to the folder already scanned as {}, skipped", p.string(),
                                         it->second));
        continue;
      }
      ENG_CHECK(depth < kMaxScanDepth,
                "ImageFolder: {}: folders nested more than {} levels below the class folder; not scanned (a loop the "
                "device/inode check cannot see, such as a bind mount, or a tree too deep for root/<class>/<image>)",
                p.string(), kMaxScanDepth);
      scan.ancestors.push_back(key);
      scan_folder(p, depth + 1, scan);
      scan.ancestors.pop_back();
    } else if (!is_image_extension(p.extension().string()) || !S_ISREG(st.st_mode)) {
      scan.ignored++;  // not an image by name, or a device / FIFO / socket that merely has an image's name
    } else if (auto [it, fresh] = scan.image_keys.emplace(key, p.string()); !fresh) {
      scan.notes.push_back(fmt::format("{}: a second path to the image already listed as {}, skipped", p.string(),
                                       it->second));
    } else {
      scan.images.emplace_back(p.string(), key);
    }
  }
}

void scan_class_folder(const fs::path& class_dir, ClassScan& scan) {
  struct stat st;
  ENG_CHECK(::stat(class_dir.c_str(), &st) == 0, "ImageFolder: cannot read class folder {} ({})", class_dir.string(),
            std::strerror(errno));
  const FileKey key{uint64_t(st.st_dev), uint64_t(st.st_ino)};
  scan.folders.emplace(key, class_dir.string());
  scan.ancestors.push_back(key);
  scan_folder(class_dir, 0, scan);
}

}  // namespace

ImageFolder::ImageFolder(const std::string& root, const ImageFolderOptions& options) : root_(root) {
  std::error_code ec;
  ENG_CHECK(fs::exists(root, ec), "ImageFolder: root folder {} does not exist", root);
  ENG_CHECK(fs::is_directory(root, ec), "ImageFolder: {} is not a folder", root);

  std::vector<std::string> all_classes;
  for (fs::directory_iterator it(root, fs::directory_options::follow_directory_symlink, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (is_hidden(it->path())) continue;
    if (it->is_directory(ec)) {
      all_classes.push_back(it->path().filename().string());
    } else {
      ignored_files_++;  // files directly under root belong to no class
    }
  }
  ENG_CHECK(!ec, "ImageFolder: cannot list {} ({})", root, ec.message());
  ENG_CHECK(!all_classes.empty(), "ImageFolder: {} has no class folders (expected root/<class>/<image>)", root);
  std::sort(all_classes.begin(), all_classes.end());

  if (options.classes.empty()) {
    classes_ = all_classes;
  } else {
    classes_ = options.classes;
    std::sort(classes_.begin(), classes_.end());
    ENG_CHECK(std::adjacent_find(classes_.begin(), classes_.end()) == classes_.end(),
              "ImageFolder: the class list for {} names a class twice", root);
    for (const std::string& c : classes_)
      ENG_CHECK(std::binary_search(all_classes.begin(), all_classes.end(), c),
                "ImageFolder: class folder {}/{} does not exist", root, c);
  }

  std::map<FileKey, size_t> image_class;  // every image listed so far -> its label
  for (size_t label = 0; label < classes_.size(); label++) {
    const fs::path class_dir = fs::path(root) / classes_[label];
    ClassScan scan;
    scan_class_folder(class_dir, scan);
    ignored_files_ += scan.ignored;
    for (std::string& note : scan.notes) notes_.push_back(std::move(note));
    std::vector<std::string> files;
    for (auto& [path, key] : scan.images) {
      auto [it, fresh] = image_class.emplace(key, label);
      ENG_CHECK(fresh || it->second == label,
                "ImageFolder: {} is an image of class folder {} too (a link or a second path to one file): one image "
                "cannot have two labels; remove one of them", path, classes_[it->second]);
      files.push_back(std::move(path));
    }
    ENG_CHECK(!files.empty(), "ImageFolder: class folder {} has no image files (jpg, jpeg, png, ppm, pgm, bmp)",
              class_dir.string());
    std::sort(files.begin(), files.end());
    if (options.max_per_class > 0 && int64_t(files.size()) > options.max_per_class)
      files.resize(size_t(options.max_per_class));
    for (std::string& f : files) {
      paths_.push_back(std::move(f));
      labels_.push_back(int64_t(label));
    }
  }
  // What the scan skipped, one line each (the first few), so that no link is dropped without a word.
  constexpr size_t kNotesShown = 5;
  for (size_t k = 0; k < notes_.size() && k < kNotesShown; k++) fmt::print(stderr, "ImageFolder: {}\n", notes_[k]);
  if (notes_.size() > kNotesShown)
    fmt::print(stderr, "ImageFolder: ... and {} more links skipped under {}\n", notes_.size() - kNotesShown, root);
}

const std::string& ImageFolder::path(int64_t i) const {
  check_index(i);
  return paths_[size_t(i)];
}

Sample ImageFolder::get(int64_t i) const {
  check_index(i);
  Sample s;
  s.id = paths_[size_t(i)];
  s.label = labels_[size_t(i)];
  s.image = image_to_tensor(decode_image(s.id));
  return s;
}

std::string ImageFolder::id(int64_t i) const { return path(i); }

int64_t ImageFolder::label(int64_t i) const {
  check_index(i);
  return labels_[size_t(i)];
}

std::string ImageFolder::describe() const {
  return fmt::format("ImageFolder({}: {} classes, {} images)", root_, classes_.size(), paths_.size());
}

// ---- IDX ----------------------------------------------------------------------------------------------------

IdxDataset::IdxDataset(const std::string& dir, const std::string& split, int64_t limit,
                       std::vector<std::string> class_names)
    : images_path_(dir + "/" + split + "-images-idx3-ubyte.gz"), classes_(std::move(class_names)) {
  const std::string labels_path = dir + "/" + split + "-labels-idx1-ubyte.gz";
  IdxArray im = read_idx(images_path_);
  IdxArray lb = read_idx(labels_path);
  ENG_CHECK(im.dims.size() == 3, "{}: expected 3 dims (N, H, W), got {}", images_path_, im.dims.size());
  ENG_CHECK(lb.dims.size() == 1 && lb.dims[0] == im.dims[0], "{}: {} labels for {} images in {}", labels_path,
            lb.dims.empty() ? 0 : lb.dims[0], im.dims[0], images_path_);
  if (classes_.empty())
    for (int k = 0; k < 10; k++) classes_.push_back(std::to_string(k));
  n_ = limit > 0 ? std::min(limit, im.dims[0]) : im.dims[0];
  h_ = im.dims[1];
  w_ = im.dims[2];
  im.bytes.resize(size_t(n_ * h_ * w_));
  pixels_ = std::move(im.bytes);
  pixels_.shrink_to_fit();
  labels_.assign(lb.bytes.begin(), lb.bytes.begin() + n_);
  for (int64_t i = 0; i < n_; i++)
    ENG_CHECK(labels_[size_t(i)] < classes_.size(), "{}: label {} at index {} is out of range (classes: {})",
              labels_path, int(labels_[size_t(i)]), i, classes_.size());
}

Sample IdxDataset::get(int64_t i) const {
  check_index(i);
  Sample s;
  s.id = id(i);
  s.label = labels_[size_t(i)];
  const int64_t hw = h_ * w_;
  s.image = eng::Tensor::empty({3, h_, w_});
  float* out = s.image.data<float>();
  const uint8_t* in = pixels_.data() + i * hw;
  for (int64_t p = 0; p < hw; p++) out[p] = float(in[p]) / 255.0f;
  std::copy(out, out + hw, out + hw);  // gray -> the same value in R, G and B
  std::copy(out, out + hw, out + 2 * hw);
  return s;
}

std::string IdxDataset::id(int64_t i) const {
  check_index(i);
  return fmt::format("{}#{}", images_path_, i);
}

int64_t IdxDataset::label(int64_t i) const {
  check_index(i);
  return labels_[size_t(i)];
}

std::string IdxDataset::describe() const {
  return fmt::format("IdxDataset({}: {} images {}x{})", images_path_, n_, h_, w_);
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::shared_ptr<IdxDataset> fashion_mnist(const std::string& split, int64_t limit) {
  const std::string dir = fashion_mnist_dir();
  ENG_CHECK(!dir.empty(),
            "Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist`, or set FASHION_MNIST_DIR to "
            "a folder holding train-images-idx3-ubyte.gz and friends");
  ENG_CHECK(split == "train" || split == "t10k" || split == "test",
            "fashion_mnist: split must be \"train\" or \"t10k\" (or \"test\"), got \"{}\"", split);
  return std::make_shared<IdxDataset>(dir, split == "test" ? "t10k" : split, limit, fashion_mnist_classes());
}

// ---- CIFAR-10 binary ------------------------------------------------------------------------------------------

namespace {
constexpr int64_t kCifarPixels = 3 * 32 * 32;
constexpr int64_t kCifarRecord = 1 + kCifarPixels;
const std::vector<std::string>& cifar10_default_classes() {
  static const std::vector<std::string> names = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                 "dog",      "frog",       "horse", "ship", "truck"};
  return names;
}
}  // namespace

CifarBinary::CifarBinary(const std::vector<std::string>& files, std::vector<std::string> class_names)
    : files_(files), classes_(std::move(class_names)) {
  ENG_CHECK(!files_.empty(), "CifarBinary: no files given");
  if (classes_.empty()) classes_ = cifar10_default_classes();
  for (const std::string& path : files_) {
    struct stat st;
    ENG_CHECK(::stat(path.c_str(), &st) == 0, "{}: cannot open ({})", path, std::strerror(errno));
    const int64_t bytes = int64_t(st.st_size);
    ENG_CHECK(bytes > 0 && bytes % kCifarRecord == 0,
              "{}: size {} bytes is not a multiple of {} (1 label byte + 3072 pixel bytes per CIFAR-10 record)", path,
              bytes, kCifarRecord);
    const int64_t records = bytes / kCifarRecord;
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    ENG_CHECK(f != nullptr, "{}: cannot open ({})", path, std::strerror(errno));
    std::vector<uint8_t> raw(static_cast<size_t>(bytes));
    ENG_CHECK(std::fread(raw.data(), 1, raw.size(), f.get()) == raw.size(), "{}: short read of {} bytes", path, bytes);
    file_start_.push_back(int64_t(labels_.size()));
    for (int64_t r = 0; r < records; r++) {
      const uint8_t* rec = raw.data() + r * kCifarRecord;
      ENG_CHECK(rec[0] < classes_.size(), "{}: record {} has label {}, but there are {} classes", path, r, int(rec[0]),
                classes_.size());
      labels_.push_back(rec[0]);
      pixels_.insert(pixels_.end(), rec + 1, rec + kCifarRecord);
    }
  }
}

std::shared_ptr<CifarBinary> CifarBinary::cifar10(const std::string& dir, bool train) {
  std::vector<std::string> files;
  if (train) {
    for (int k = 1; k <= 5; k++) files.push_back(fmt::format("{}/data_batch_{}.bin", dir, k));
  } else {
    files.push_back(dir + "/test_batch.bin");
  }
  std::vector<std::string> names;
  std::ifstream meta(dir + "/batches.meta.txt");
  for (std::string line; std::getline(meta, line);) {
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  return std::make_shared<CifarBinary>(files, names);
}

Sample CifarBinary::get(int64_t i) const {
  check_index(i);
  Sample s;
  s.id = id(i);
  s.label = labels_[size_t(i)];
  s.image = eng::Tensor::empty({3, 32, 32});
  float* out = s.image.data<float>();
  const uint8_t* in = pixels_.data() + i * kCifarPixels;  // already planar R, G, B: the [3, 32, 32] layout
  for (int64_t p = 0; p < kCifarPixels; p++) out[p] = float(in[p]) / 255.0f;
  return s;
}

std::string CifarBinary::id(int64_t i) const {
  check_index(i);
  size_t f = size_t(std::upper_bound(file_start_.begin(), file_start_.end(), i) - file_start_.begin()) - 1;
  return fmt::format("{}#{}", files_[f], i - file_start_[f]);
}

int64_t CifarBinary::label(int64_t i) const {
  check_index(i);
  return labels_[size_t(i)];
}

std::string CifarBinary::describe() const {
  return fmt::format("CifarBinary({}{}: {} images)", files_[0], files_.size() > 1 ? fmt::format(" +{} files", files_.size() - 1) : "",
                     labels_.size());
}

// ---- TensorDataset ---------------------------------------------------------------------------------------------

TensorDataset::TensorDataset(eng::Tensor images, eng::Tensor labels, std::vector<std::string> class_names,
                             std::string name)
    : classes_(std::move(class_names)), name_(std::move(name)) {
  ENG_CHECK(images.defined() && images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3),
            "TensorDataset {}: images must be [N, 1 or 3, H, W], got {}", name_,
            images.defined() ? eng::shape_str(images.shape()) : "undefined");
  ENG_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == images.size(0),
            "TensorDataset {}: labels must be [N] with N = {}, got {}", name_, images.size(0),
            labels.defined() ? eng::shape_str(labels.shape()) : "undefined");
  images_ = images.to(eng::Device::cpu()).to(eng::DType::F32).contiguous();
  labels_ = labels.to(eng::Device::cpu()).to(eng::DType::I64).contiguous();
  if (classes_.empty()) {
    const int64_t* l = labels_.data<int64_t>();
    int64_t max_label = -1;
    for (int64_t i = 0; i < labels_.numel(); i++) max_label = std::max(max_label, l[i]);
    for (int64_t k = 0; k <= max_label; k++) classes_.push_back(std::to_string(k));
  }
}

Sample TensorDataset::get(int64_t i) const {
  check_index(i);
  const int64_t c = images_.size(1), h = images_.size(2), w = images_.size(3), hw = h * w;
  Sample s;
  s.id = id(i);
  s.label = labels_.data<int64_t>()[i];
  s.image = eng::Tensor::empty({3, h, w});
  const float* in = images_.data<float>() + i * c * hw;
  float* out = s.image.data<float>();
  for (int64_t k = 0; k < 3; k++) std::copy(in + (c == 1 ? 0 : k) * hw, in + (c == 1 ? 1 : k + 1) * hw, out + k * hw);
  return s;
}

std::string TensorDataset::id(int64_t i) const {
  check_index(i);
  return fmt::format("{}[{}]", name_, i);
}

int64_t TensorDataset::label(int64_t i) const {
  check_index(i);
  return labels_.data<int64_t>()[i];
}

std::string TensorDataset::describe() const {
  return fmt::format("TensorDataset({}: {} images {}x{})", name_, images_.size(0), images_.size(2), images_.size(3));
}

// ---- SubsetDataset ---------------------------------------------------------------------------------------------

SubsetDataset::SubsetDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices)
    : base_(std::move(base)), indices_(std::move(indices)) {
  ENG_CHECK(base_ != nullptr, "SubsetDataset: no base dataset");
  for (int64_t i : indices_)
    ENG_CHECK(i >= 0 && i < base_->size(), "SubsetDataset: index {} out of range for {}", i, base_->describe());
}

Sample SubsetDataset::get(int64_t i) const {
  check_index(i);
  return base_->get(indices_[size_t(i)]);
}

std::string SubsetDataset::id(int64_t i) const {
  check_index(i);
  return base_->id(indices_[size_t(i)]);
}

int64_t SubsetDataset::label(int64_t i) const {
  check_index(i);
  return base_->label(indices_[size_t(i)]);
}

std::string SubsetDataset::describe() const {
  return fmt::format("Subset({} of {})", indices_.size(), base_->describe());
}

}  // namespace data
