// downstream.h: a downstream task's data for fine-tuning and the linear probe: the training set, the test set (given,
// or carved from the data with a fixed seed), the validation split carved from training (the learning-rate choice),
// the class list, and the checks that come before any training.
//
// Splits are seeded permutations (eng::Generator(split_seed, stream)): the test part is the first
// round(n * test_fraction) images of the permutation of stream 1, the validation part the first
// round(n_train * val_fraction) of the training images under stream 2; so the same flags give the same images.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace moce::finetune {

struct DownstreamOptions {
  std::string data;                 // --data: an image folder, fashion-mnist or cifar10-bin:DIR
  std::string test_data;            // --test-data ("" = carve test_fraction of --data)
  std::string classes;              // --classes: keep these classes (names or indices, comma-separated; "" = all)
  double test_fraction = 0.2;       // without --test-data
  double val_fraction = 0.2;        // of the training images, for the learning-rate grid
  uint64_t split_seed = 0;
  int64_t limit = 0, limit_test = 0;  // the first N images (after the class filter; 0 = all)
  int64_t per_class = 0, per_class_test = 0;  // the first N images of each class (0 = all; before the limits)
};

struct Downstream {
  std::shared_ptr<const data::Dataset> train;       // all training images (the per-seed runs)
  std::shared_ptr<const data::Dataset> train_part;  // train minus val (the grid's runs)
  std::shared_ptr<const data::Dataset> val;
  std::shared_ptr<const data::Dataset> test;
  std::vector<std::string> classes;                 // label i is classes[i], in every split
  int64_t image_height = 0, image_width = 0;        // of the first training image
  std::string description;                          // one line for the log and the JSON
};

// Opens and splits the data. One-line errors (each before any training): fewer than 2 classes in the training
// data (or the training part), a class of the test set the training set does not have, an empty split, fractions
// outside (0, 1), a --classes entry that names no class.
Downstream open_downstream(const DownstreamOptions& o);

// The images of `ds` of the classes `spec` names (names or indices, comma-separated, as --classes; "" = all),
// relabelled 0.. in the order given, the first `per_class` of each class (0 = all), then the first `limit` of them
// (0 = all): a task's images for the commands that read one without splitting it (moce search, moce export). Errors
// name --classes, --limit and --per-class.
std::shared_ptr<const data::Dataset> select_classes(std::shared_ptr<const data::Dataset> ds, const std::string& spec,
                                                    int64_t limit = 0, int64_t per_class = 0);

// The note printed once when the images are not the model's size ("" when they are): they are resized.
std::string resize_note(const Downstream& d, int64_t img_size);

}  // namespace moce::finetune
