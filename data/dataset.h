// dataset.h: the datasets behind the loader, one interface: ImageFolder (image files in class folders,
// decoded lazily), MNIST-style IDX files (Fashion-MNIST from Debian), the CIFAR-10 binary format, and
// in-memory tensors. Every sample comes out as f32 [3, H, W] in [0, 1] (before any normalisation):
// the models always take 3 channels, so gray images are expanded by copying the one channel.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/image.h"
#include "engine/tensor.h"

namespace data {

struct Sample {
  eng::Tensor image;  // f32 [3, H, W] in [0, 1]
  int64_t label = -1;
  std::string id;     // names the sample in error messages: a file path, or "file#record"
};

// get() and the other accessors must be safe to call from several threads at once (the loader's workers).
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Throws CorruptImage for a sample that cannot be decoded (the loader skips those), eng::Error otherwise.
  virtual Sample get(int64_t i) const = 0;
  virtual std::string id(int64_t i) const = 0;  // cheap: no decoding
  virtual int64_t label(int64_t i) const = 0;   // cheap: no decoding
  virtual const std::vector<std::string>& classes() const = 0;
  int64_t num_classes() const { return int64_t(classes().size()); }
  virtual std::string describe() const = 0;  // one line, e.g. "ImageFolder(root: 10 classes, 10000 images)"

 protected:
  void check_index(int64_t i) const;  // eng::Error naming describe() when i is out of range
};

// ---- ImageFolder: root/<class>/<image> ---------------------------------------------------------------
struct ImageFolderOptions {
  std::vector<std::string> classes;  // keep only these class folders (labels follow their sorted order); empty: all
  int64_t max_per_class = 0;         // > 0: keep the first max_per_class files of each class (sorted order)
};

// Class folders are the directories directly under root, sorted by name (byte order), labelled 0..K-1.
// Files are found recursively under each class folder (symlinks followed) and sorted by path. Each real folder
// and each real image (by device and inode) is taken once: a link back to a folder above it (a loop), a second
// path to a folder or image already seen, and a broken link are skipped with a note (scan_notes(), the first
// five also on stderr); folders more than 32 levels below the class folder and an image reached from two class
// folders are errors. Files with
// the extensions jpg, jpeg, png, ppm, pgm, bmp (any case) are images; every other file (and hidden files,
// and files directly under root) is skipped and counted in ignored_files(). A missing root, a root with no
// class folders, or a class folder with no image files is an error naming the folder.
// Decoding happens in get(), so the dataset holds only paths.
class ImageFolder : public Dataset {
 public:
  explicit ImageFolder(const std::string& root, const ImageFolderOptions& options = {});
  int64_t size() const override { return int64_t(paths_.size()); }
  Sample get(int64_t i) const override;
  std::string id(int64_t i) const override;
  int64_t label(int64_t i) const override;
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string describe() const override;
  const std::string& root() const { return root_; }
  const std::string& path(int64_t i) const;
  int64_t ignored_files() const { return ignored_files_; }  // non-image files seen while listing
  // One line per link the scan skipped ("<path>: a link back to a folder above it (a loop), skipped").
  const std::vector<std::string>& scan_notes() const { return notes_; }

 private:
  std::string root_;
  std::vector<std::string> classes_;
  std::vector<std::string> paths_;
  std::vector<int64_t> labels_;
  int64_t ignored_files_ = 0;
  std::vector<std::string> notes_;
};

// True for the extensions ImageFolder accepts (case-insensitive, with or without the leading dot).
bool is_image_extension(const std::string& ext);

// ---- MNIST-style IDX files ------------------------------------------------------------------------------
// Reads `<dir>/<split>-images-idx3-ubyte.gz` and `<dir>/<split>-labels-idx1-ubyte.gz` (split "train" or
// "t10k"); the bytes stay in memory (47 MB for 60k images) and each get() makes a [3, 28, 28] tensor.
// Resizing to 32x32 (for patch size 4 or 8) is the transform's job (Resize(32, 32)).
class IdxDataset : public Dataset {
 public:
  // `limit` > 0 keeps the first `limit` images; `class_names` default to "0".."9".
  IdxDataset(const std::string& dir, const std::string& split, int64_t limit = 0,
             std::vector<std::string> class_names = {});
  int64_t size() const override { return n_; }
  Sample get(int64_t i) const override;
  std::string id(int64_t i) const override;
  int64_t label(int64_t i) const override;
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string describe() const override;

 private:
  std::string images_path_;
  int64_t n_ = 0, h_ = 0, w_ = 0;
  std::vector<uint8_t> pixels_;
  std::vector<uint8_t> labels_;
  std::vector<std::string> classes_;
};

// Fashion-MNIST from Debian's dataset-fashion-mnist (or $FASHION_MNIST_DIR), with its class names.
// Throws an eng::Error saying how to install it when it is absent (see fashion_mnist_dir() in idx.h).
std::shared_ptr<IdxDataset> fashion_mnist(const std::string& split, int64_t limit = 0);
const std::vector<std::string>& fashion_mnist_classes();

// ---- CIFAR-10 binary format -----------------------------------------------------------------------------
// Each record is 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, each 32x32 row-major), so a
// file's size must be a multiple of 3073. All records are read into memory (31 MB for 10 files' worth).
class CifarBinary : public Dataset {
 public:
  explicit CifarBinary(const std::vector<std::string>& files, std::vector<std::string> class_names = {});
  // `dir` holds data_batch_1.bin .. data_batch_5.bin (train) or test_batch.bin (test), as the
  // "CIFAR-10 binary version" archive unpacks; class names come from batches.meta.txt when present.
  static std::shared_ptr<CifarBinary> cifar10(const std::string& dir, bool train);
  int64_t size() const override { return int64_t(labels_.size()); }
  Sample get(int64_t i) const override;
  std::string id(int64_t i) const override;
  int64_t label(int64_t i) const override;
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string describe() const override;

 private:
  std::vector<std::string> files_;
  std::vector<int64_t> file_start_;  // first record index of each file
  std::vector<uint8_t> pixels_;      // 3072 bytes per record
  std::vector<uint8_t> labels_;
  std::vector<std::string> classes_;
};

// ---- in memory ------------------------------------------------------------------------------------------
// Images f32 [N, C, H, W] (C = 1 or 3, values in [0, 1]) and labels i64 [N]; ids are "<name>[i]".
class TensorDataset : public Dataset {
 public:
  TensorDataset(eng::Tensor images, eng::Tensor labels, std::vector<std::string> class_names = {},
                std::string name = "tensors");
  int64_t size() const override { return images_.size(0); }
  Sample get(int64_t i) const override;
  std::string id(int64_t i) const override;
  int64_t label(int64_t i) const override;
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string describe() const override;

 private:
  eng::Tensor images_, labels_;
  std::vector<std::string> classes_;
  std::string name_;
};

// A view of some samples of another dataset, in the given order (e.g. a train/validation split).
class SubsetDataset : public Dataset {
 public:
  SubsetDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices);
  int64_t size() const override { return int64_t(indices_.size()); }
  Sample get(int64_t i) const override;
  std::string id(int64_t i) const override;
  int64_t label(int64_t i) const override;
  const std::vector<std::string>& classes() const override { return base_->classes(); }
  std::string describe() const override;

 private:
  std::shared_ptr<const Dataset> base_;
  std::vector<int64_t> indices_;
};

}  // namespace data
