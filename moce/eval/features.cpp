// features.cpp: feature extraction over a dataset, through BatchFeed on the model's device.
#include "moce/eval/features.h"

#include <cmath>

#include "engine/error.h"

#include "engine/autograd.h"
#include "engine/ops.h"
#include "moce/common/batch_feed.h"

namespace moce {

using eng::DType;
using eng::Tensor;

void check_features(const Tensor& f, const Tensor& labels, const char* what) {
  ENG_CHECK(f.defined() && f.dim() == 2, "{} features must be [N, D], got {}", what,
            f.defined() ? eng::shape_str(f.shape()) : "undefined");
  ENG_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == f.size(0),
            "{} labels must be [{}], got {}", what, f.size(0), labels.defined() ? eng::shape_str(labels.shape()) : "undefined");
  ENG_CHECK(f.size(0) > 0, "{} set is empty", what);
}

std::vector<int64_t> checked_labels(const Tensor& labels, int64_t num_classes, const char* what) {
  std::vector<int64_t> l = labels.to_vector<int64_t>();
  for (size_t i = 0; i < l.size(); i++)
    ENG_CHECK(l[i] >= 0 && l[i] < num_classes, "{} label {} of row {} is outside [0, {})", what, l[i], i, num_classes);
  return l;
}

data::LoaderOptions eval_loader_options(int64_t batch_size, int workers) {
  data::LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.num_workers = workers;
  return lo;
}

FeatureSet extract_features(const FeatureFn& fn, std::shared_ptr<const data::Dataset> ds, const data::Pipeline& pipeline,
                            const ExtractOptions& options, eng::Device device) {
  ENG_CHECK(ds && ds->size() > 0, "feature extraction: {} has no images", ds ? ds->describe() : "no dataset");
  ENG_CHECK(options.batch_size > 0, "feature extraction: batch size must be positive, got {}", options.batch_size);
  data::Loader loader(ds, pipeline, eval_loader_options(options.batch_size, options.workers));
  BatchFeed feed(loader, device);
  feed.start_epoch(0, loader.batches_per_epoch());
  eng::NoGradGuard no_grad;
  std::vector<Tensor> feats, labels;
  data::Batch b;
  int64_t dim = -1;
  while (feed.next(b)) {
    Tensor on_device = fn(b.images);  // queued
    feed.prefetch();                  // the next batch is loaded and its copy queued meanwhile
    Tensor f = on_device.to(eng::Device::cpu()).to(DType::F32).contiguous();
    ENG_CHECK(f.dim() == 2 && f.size(0) == b.images.size(0) && (dim < 0 || f.size(1) == dim),
              "feature extraction: the model gave {} for a batch of {} images", eng::shape_str(f.shape()),
              b.images.size(0));
    dim = f.size(1);
    const float* p = f.data<float>();
    for (int64_t i = 0; i < f.numel(); i++)
      ENG_CHECK(std::isfinite(p[i]), "feature extraction: non-finite feature for one of the images {}", loader.batch_ids(b));
    feats.push_back(f);
    labels.push_back(b.labels.to(eng::Device::cpu()));
  }
  FeatureSet out;
  out.features = feats.size() == 1 ? feats[0] : eng::cat(feats, 0);
  out.labels = labels.size() == 1 ? labels[0] : eng::cat(labels, 0);
  out.skipped = loader.skipped();
  return out;
}

FeatureSet extract_features(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                            const ExtractOptions& options) {
  eng::Device device = model.patch_weight.device();
  return extract_features([&](const Tensor& imgs) { return model.features(imgs); }, std::move(ds),
                          data::eval_pipeline(model.config().img_size), options, device);
}

}  // namespace moce
