// moce/cluster/extract.h: the feature bank from a pre-trained MAE encoder over a data set: all patches (no masking),
// the mean of the patch tokens after the final norm (pool "mean", what MaskedAutoencoder::features gives) or the class
// token (pool "cls"), L2-normalised, in batches through the threaded loader, with a progress line.
#pragma once
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "engine/ops.h"
#include "model/mae.h"
#include "moce/cluster/bank.h"

namespace moce::cluster {

struct ExtractOptions {
  std::string pool = "mean";          // "mean" or "cls"
  eng::DType dtype = eng::DType::F32; // bank storage: F32 or BF16
  int64_t batch_size = 256;
  int workers = 2;
  std::string checkpoint_identity;    // stored in the bank
  // Called with one progress line ("features: 2560/50000 images, 812 images/s, ETA 58 s") every progress_every
  // batches and at the end; empty: silent.
  std::function<void(const std::string&)> progress;
  int64_t progress_every = 20;
};

// Runs the encoder on every image of `ds` (through `pipeline`, e.g. data::eval_pipeline(img_size)) on the model's
// device. Corrupt images are skipped by the loader (and listed by it); every other image gets one row, in data-set
// order, with its index and id. A non-finite feature stops with the image's id.
FeatureBank extract_bank(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                         const data::Pipeline& pipeline, const ExtractOptions& opt);

// The data set's label of every bank row (for purity and NMI in clusters.json).
std::vector<int64_t> bank_labels(const FeatureBank& bank, const data::Dataset& ds);

}  // namespace moce::cluster
