// features.h: the encoder's features over a dataset (the input of the k-NN and the linear probe), and the checks
// every consumer of a feature matrix makes.
//
// Features are the encoder without masking (model.features: mean of the patch tokens after the final norm), in
// dataset order, no gradient.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "engine/tensor.h"
#include "model/mae.h"

namespace moce {

struct FeatureSet {
  eng::Tensor features;  // f32 [N, D], CPU, row i = sample i of the dataset (in order)
  eng::Tensor labels;    // i64 [N]
  int64_t skipped = 0;   // corrupt images the loader replaced (see data/loader.h)
};

struct ExtractOptions {
  int64_t batch_size = 128;
  int workers = 2;
};

// Maps a batch of pipeline outputs [B, 3, H, W] to features [B, D]; called under NoGradGuard.
using FeatureFn = std::function<eng::Tensor(const eng::Tensor& images)>;

// Runs `fn` over `ds` through `pipeline` (shuffle off, drop_last off) and stacks the results (on the CPU). The
// images reach `fn` on `device`; on a GPU through BatchFeed (moce/common/batch_feed.h), so the next batch is loaded and
// copied while `fn`'s kernels run.
FeatureSet extract_features(const FeatureFn& fn, std::shared_ptr<const data::Dataset> ds, const data::Pipeline& pipeline,
                            const ExtractOptions& options = {}, eng::Device device = eng::Device::cpu());
// The MAE's features (model.features) with the evaluation pipeline at the model's image size
// (data::eval_pipeline, which also resizes images of another size, e.g. Fashion-MNIST's 28x28).
FeatureSet extract_features(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                            const ExtractOptions& options = {});

// The loader options of every evaluation pass: dataset order, the last batch kept even when short.
data::LoaderOptions eval_loader_options(int64_t batch_size, int workers);

// Features [N, D] with labels [N], N > 0; `what` names the set in the error ("k-NN training").
void check_features(const eng::Tensor& features, const eng::Tensor& labels, const char* what);
// The labels as integers, each checked to lie in [0, num_classes).
std::vector<int64_t> checked_labels(const eng::Tensor& labels, int64_t num_classes, const char* what);

}  // namespace moce
