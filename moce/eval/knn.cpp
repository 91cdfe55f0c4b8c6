// knn.cpp: the k-NN classifier (similarity in chunks of test rows, one partial sort per row).
#include "moce/eval/knn.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "moce/eval/features.h"

namespace moce {

using eng::DType;
using eng::Tensor;

KnnResult knn_classify(const Tensor& train_features, const Tensor& train_labels, const Tensor& test_features,
                       const Tensor& test_labels, int64_t num_classes, const KnnOptions& options) {
  check_features(train_features, train_labels, "k-NN training");
  check_features(test_features, test_labels, "k-NN test");
  ENG_CHECK(train_features.size(1) == test_features.size(1), "k-NN: training features have {} dimensions, test features {}",
            train_features.size(1), test_features.size(1));
  ENG_CHECK(options.k > 0 && options.temperature > 0 && options.chunk_rows > 0,
            "k-NN: k ({}), temperature ({}) and chunk_rows ({}) must be positive", options.k, options.temperature,
            options.chunk_rows);
  ENG_CHECK(num_classes > 0, "k-NN: num_classes must be positive, got {}", num_classes);
  eng::NoGradGuard no_grad;
  const int64_t n_train = train_features.size(0), n_test = test_features.size(0);
  const int64_t k = std::min(options.k, n_train);
  std::vector<int64_t> train_l = checked_labels(train_labels, num_classes, "k-NN training");
  std::vector<int64_t> test_l = checked_labels(test_labels, num_classes, "k-NN test");

  Tensor train_n = eng::l2_normalize(train_features.to(eng::Device::cpu()).to(DType::F32), 1);
  Tensor test_n = eng::l2_normalize(test_features.to(eng::Device::cpu()).to(DType::F32), 1);
  Tensor train_t = train_n.t().contiguous();  // [D, N_train]

  KnnResult r;
  r.predictions.assign(size_t(n_test), -1);
  for (int64_t start = 0; start < n_test; start += options.chunk_rows) {
    const int64_t rows = std::min(options.chunk_rows, n_test - start);
    Tensor sim = eng::matmul(test_n.narrow(0, start, rows), train_t).contiguous();  // [rows, N_train]
    const float* s = sim.data<float>();
    // Rows are independent; each writes only its own prediction.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
      const float* row = s + i * n_train;
      std::vector<int64_t> order(static_cast<size_t>(n_train));
      std::iota(order.begin(), order.end(), int64_t(0));
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int64_t a, int64_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      std::vector<double> score(size_t(num_classes), 0.0);
      for (int64_t j = 0; j < k; j++) {
        int64_t t = order[size_t(j)];
        score[size_t(train_l[size_t(t)])] += std::exp(double(row[t]) / options.temperature);
      }
      int64_t best = 0;
      for (int64_t c = 1; c < num_classes; c++)
        if (score[size_t(c)] > score[size_t(best)]) best = c;
      r.predictions[size_t(start + i)] = best;
    }
  }
  for (int64_t i = 0; i < n_test; i++) r.correct += r.predictions[size_t(i)] == test_l[size_t(i)];
  r.total = n_test;
  r.top1 = double(r.correct) / double(n_test);
  return r;
}

}  // namespace moce
