// knn.h: the k-NN classifier on frozen features: cosine similarity to every training feature, the k nearest vote
// with weight exp(sim / T) (Wu et al. 2018 "InstDisc", as DINO's eval_knn: k = 20, T = 0.07). Deterministic: ties
// are broken by the training index and then the class index.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace moce {

struct KnnOptions {
  int64_t k = 20;
  double temperature = 0.07;
  int64_t chunk_rows = 256;  // test rows per similarity matmul
};

struct KnnResult {
  double top1 = 0;  // fraction in [0, 1]
  int64_t correct = 0, total = 0;
  std::vector<int64_t> predictions;  // one per test row
};

// Features [N, D] (any float dtype; L2-normalised here), labels i64 in [0, num_classes).
// Neighbours: the k largest similarities, ties by the smaller training index; class score = sum of
// exp(sim / T) over the neighbours of that class (in f64); prediction = the highest score, ties by the
// smaller class index. k is capped at the number of training rows.
KnnResult knn_classify(const eng::Tensor& train_features, const eng::Tensor& train_labels,
                       const eng::Tensor& test_features, const eng::Tensor& test_labels, int64_t num_classes,
                       const KnnOptions& options = {});

}  // namespace moce
