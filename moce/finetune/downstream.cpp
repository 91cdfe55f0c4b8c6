// downstream.cpp: the class filter and relabelling, the seeded splits, and the checks of a downstream task.
#include "moce/finetune/downstream.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "engine/error.h"
#include "engine/rng.h"
#include "moce/common/dataset.h"

namespace moce::finetune {

namespace {

// Some images of a base set, with labels mapped to a new class list (the task's): for a class filter, and for a test
// set whose class folders are a subset of training's (its own labels would number them differently).
class RelabeledDataset : public data::Dataset {
 public:
  RelabeledDataset(std::shared_ptr<const data::Dataset> base, std::vector<int64_t> indices, std::vector<int64_t> label_of,
                   std::vector<std::string> classes)
      : base_(std::move(base)), indices_(std::move(indices)), label_of_(std::move(label_of)), classes_(std::move(classes)) {}
  int64_t size() const override { return int64_t(indices_.size()); }
  data::Sample get(int64_t i) const override {
    check_index(i);
    data::Sample s = base_->get(indices_[size_t(i)]);
    s.label = label_of_[size_t(s.label)];
    return s;
  }
  std::string id(int64_t i) const override {
    check_index(i);
    return base_->id(indices_[size_t(i)]);
  }
  int64_t label(int64_t i) const override {
    check_index(i);
    return label_of_[size_t(base_->label(indices_[size_t(i)]))];
  }
  const std::vector<std::string>& classes() const override { return classes_; }
  std::string describe() const override {
    return fmt::format("{} images of {} classes from {}", indices_.size(), classes_.size(), base_->describe());
  }

 private:
  std::shared_ptr<const data::Dataset> base_;
  std::vector<int64_t> indices_, label_of_;
  std::vector<std::string> classes_;
};

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); i++) s += (i ? ", " : "") + v[i];
  return s;
}

// --classes "Sandal,Sneaker,Ankle boot" or "5,7,9" -> base class indices, in the order given.
std::vector<int64_t> chosen_classes(const std::string& spec, const std::vector<std::string>& names) {
  std::vector<int64_t> out;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    int64_t found = -1;
    for (size_t i = 0; i < names.size(); i++)
      if (lower(names[i]) == lower(item)) found = int64_t(i);
    if (found < 0 && !item.empty() && std::all_of(item.begin(), item.end(), ::isdigit) && item.size() < 10 &&
        std::stoll(item) < int64_t(names.size()))
      found = std::stoll(item);
    ENG_CHECK(found >= 0, "--classes: '{}' is no class of the data (its classes: {})", item, join(names));
    ENG_CHECK(std::find(out.begin(), out.end(), found) == out.end(), "--classes: '{}' is given twice", item);
    out.push_back(found);
  }
  return out;
}

// The first `limit` images (0: all) of `base` whose label_of[label] >= 0, labelled label_of[label], as class `names`;
// with per_class > 0 only the first per_class images of each class count (an image folder is stored class by class,
// so a plain limit would keep its first classes only).
std::shared_ptr<const data::Dataset> relabeled(std::shared_ptr<const data::Dataset> base, std::vector<int64_t> label_of,
                                               std::vector<std::string> names, int64_t limit, int64_t per_class = 0) {
  std::vector<int64_t> idx, taken(names.size(), 0);
  for (int64_t i = 0; i < base->size() && (limit <= 0 || int64_t(idx.size()) < limit); i++) {
    const int64_t label = label_of[size_t(base->label(i))];
    if (label < 0 || (per_class > 0 && taken[size_t(label)] >= per_class)) continue;
    taken[size_t(label)]++;
    idx.push_back(i);
  }
  return std::make_shared<RelabeledDataset>(base, std::move(idx), std::move(label_of), std::move(names));
}

// The images of `base` whose class is one of `keep` (base indices), relabelled 0.. in that order; the first `limit`
// (and of each class the first `per_class`).
std::shared_ptr<const data::Dataset> filtered(std::shared_ptr<const data::Dataset> base, const std::vector<int64_t>& keep,
                                              int64_t limit, int64_t per_class = 0) {
  std::vector<int64_t> label_of(size_t(base->num_classes()), -1);
  std::vector<std::string> names;
  for (size_t k = 0; k < keep.size(); k++) label_of[size_t(keep[k])] = int64_t(k), names.push_back(base->classes()[size_t(keep[k])]);
  return relabeled(base, std::move(label_of), std::move(names), limit, per_class);
}

std::vector<int64_t> every_class(const data::Dataset& ds) {
  std::vector<int64_t> keep;
  for (int64_t c = 0; c < ds.num_classes(); c++) keep.push_back(c);
  return keep;
}

// Positions 0..n-1 split by a seeded permutation: the first `count` of it, and the rest (each in ascending order, so a
// split is the same set whatever order it is read in).
std::pair<std::vector<int64_t>, std::vector<int64_t>> carve(int64_t n, int64_t count, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> perm = eng::Generator(seed, stream).permutation(n).to_vector<int64_t>();
  std::vector<int64_t> a(perm.begin(), perm.begin() + count), b(perm.begin() + count, perm.end());
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return {a, b};
}

std::set<int64_t> labels_present(const data::Dataset& d) {
  std::set<int64_t> s;
  for (int64_t i = 0; i < d.size(); i++) s.insert(d.label(i));
  return s;
}

}  // namespace

std::shared_ptr<const data::Dataset> select_classes(std::shared_ptr<const data::Dataset> ds, const std::string& spec,
                                                    int64_t limit, int64_t per_class) {
  ENG_CHECK(limit >= 0, "--limit {} must be >= 0 (0 = all)", limit);
  ENG_CHECK(per_class >= 0, "--per-class {} must be >= 0 (0 = all)", per_class);
  if (spec.empty() && per_class == 0) return limit_dataset(ds, limit);
  return filtered(ds, spec.empty() ? every_class(*ds) : chosen_classes(spec, ds->classes()), limit, per_class);
}

Downstream open_downstream(const DownstreamOptions& o) {
  ENG_CHECK(!o.data.empty(), "--data: no downstream data given");
  ENG_CHECK(o.val_fraction > 0 && o.val_fraction < 1, "--val-fraction {} must lie in (0, 1)", o.val_fraction);
  ENG_CHECK(!o.test_data.empty() || (o.test_fraction > 0 && o.test_fraction < 1),
            "--test-fraction {} must lie in (0, 1) (or give --test-data)", o.test_fraction);
  std::shared_ptr<const data::Dataset> all = open_dataset(o.data, /*train=*/true);
  ENG_CHECK(o.limit >= 0 && o.limit_test >= 0, "--limit {} / --limit-test {} must be >= 0 (0 = all)", o.limit, o.limit_test);
  ENG_CHECK(o.per_class >= 0 && o.per_class_test >= 0, "--per-class {} / --per-class-test {} must be >= 0 (0 = all)",
            o.per_class, o.per_class_test);
  const std::vector<int64_t> keep = o.classes.empty() ? every_class(*all) : chosen_classes(o.classes, all->classes());
  std::shared_ptr<const data::Dataset> train = filtered(all, keep, o.limit, o.per_class);
  Downstream d;
  d.classes = train->classes();
  ENG_CHECK(d.classes.size() >= 2, "{}: {} class{} ({}): fine-tuning and the probe need at least 2", o.data,
            d.classes.size(), d.classes.size() == 1 ? "" : "es", join(d.classes));
  ENG_CHECK(train->size() > 0, "{}: no images of the chosen classes", o.data);

  if (o.test_data.empty()) {
    const int64_t n = train->size(), n_test = int64_t(std::llround(double(n) * o.test_fraction));
    ENG_CHECK(n_test > 0 && n_test < n, "{}: {} images leave no test or no training images at --test-fraction {}", o.data,
              n, o.test_fraction);
    auto [test_idx, train_idx] = carve(n, n_test, o.split_seed, 1);
    ENG_CHECK(o.per_class_test == 0, "--per-class-test needs --test-data (a carved test set follows --per-class)");
    d.test = limit_dataset(std::make_shared<data::SubsetDataset>(train, test_idx), o.limit_test);
    train = std::make_shared<data::SubsetDataset>(train, train_idx);
  } else {
    std::shared_ptr<const data::Dataset> test_all = open_dataset(o.test_data, /*train=*/false);
    // Test classes by name, numbered as training's; one that training lacks cannot be learnt.
    std::vector<int64_t> test_keep;
    for (const auto& name : d.classes) {
      auto it = std::find(test_all->classes().begin(), test_all->classes().end(), name);
      if (it != test_all->classes().end()) test_keep.push_back(int64_t(it - test_all->classes().begin()));
    }
    if (o.classes.empty())
      for (const auto& name : test_all->classes())
        ENG_CHECK(std::find(d.classes.begin(), d.classes.end(), name) != d.classes.end(),
                  "{}: test class '{}' is absent from the training data {} (its classes: {})", o.test_data, name, o.data,
                  join(d.classes));
    ENG_CHECK(!test_keep.empty(), "{}: none of its classes is a training class ({})", o.test_data, join(d.classes));
    std::vector<int64_t> label_of(size_t(test_all->num_classes()), -1);
    for (int64_t c : test_keep)
      label_of[size_t(c)] = int64_t(std::find(d.classes.begin(), d.classes.end(), test_all->classes()[size_t(c)]) - d.classes.begin());
    d.test = relabeled(test_all, std::move(label_of), d.classes, o.limit_test, o.per_class_test);
    ENG_CHECK(d.test->size() > 0, "{}: no test images of the chosen classes", o.test_data);
  }
  const std::set<int64_t> train_labels = labels_present(*train);
  for (int64_t c : labels_present(*d.test))
    ENG_CHECK(train_labels.count(c), "{}: test class '{}' is absent from the training images (too few images to split?)",
              o.test_data.empty() ? o.data : o.test_data, d.classes[size_t(c)]);
  ENG_CHECK(train_labels.size() >= 2, "{}: the training images hold only {} class", o.data, train_labels.size());

  const int64_t n = train->size(), n_val = int64_t(std::llround(double(n) * o.val_fraction));
  ENG_CHECK(n_val > 0 && n_val < n, "{}: {} training images leave no validation or no training part at --val-fraction {}",
            o.data, n, o.val_fraction);
  auto [val_idx, part_idx] = carve(n, n_val, o.split_seed, 2);
  d.train = train;
  d.val = std::make_shared<data::SubsetDataset>(train, val_idx);
  d.train_part = std::make_shared<data::SubsetDataset>(train, part_idx);
  ENG_CHECK(labels_present(*d.train_part).size() >= 2, "{}: the training part (without validation) holds only 1 class",
            o.data);
  data::Sample first = d.train->get(0);
  d.image_height = first.image.size(1);
  d.image_width = first.image.size(2);
  d.description = fmt::format("{} classes ({}); train {} (of which val {}), test {} ({}); images {}x{}", d.classes.size(),
                              join(d.classes), d.train->size(), d.val->size(), d.test->size(),
                              o.test_data.empty() ? fmt::format("carved, fraction {}", o.test_fraction) : o.test_data,
                              d.image_height, d.image_width);
  return d;
}

std::string resize_note(const Downstream& d, int64_t img_size) {
  if (d.image_height == img_size && d.image_width == img_size) return "";
  return fmt::format("note: the images are {}x{} and the model takes {}x{}: every image is resized (shorter side to {}, "
                     "bilinear with antialiasing, then the centre {}x{} crop)",
                     d.image_height, d.image_width, img_size, img_size, img_size, img_size, img_size);
}

}  // namespace moce::finetune
