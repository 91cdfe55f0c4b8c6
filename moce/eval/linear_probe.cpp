// linear_probe.cpp: the linear probe's training loop (AdamW or SGD, cosine schedule) and its accuracy.
#include "moce/eval/linear_probe.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include <omp.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/rng.h"
#include "moce/common/clock.h"
#include "moce/eval/features.h"

namespace moce {

using eng::DType;
using eng::Tensor;

namespace {

double accuracy(const Tensor& logits, const std::vector<int64_t>& labels) {
  std::vector<int64_t> pred = eng::argmax(logits, 1).to_vector<int64_t>();
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); i++) correct += pred[i] == labels[i];
  return labels.empty() ? 0.0 : double(correct) / double(labels.size());
}

// Runs its scope with one OpenMP thread: for loops of tiny ops, where starting a thread team per op costs
// more than the op (and much more on a machine whose cores are busy). Results do not depend on it: every
// kernel gives the same bits for any thread count.
class SingleThreadScope {
 public:
  SingleThreadScope() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreadScope() { omp_set_num_threads(prev_); }
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

 private:
  int prev_;
};

}  // namespace

ProbeResult linear_probe(const Tensor& train_features, const Tensor& train_labels, const Tensor& test_features,
                         const Tensor& test_labels, int64_t num_classes, const ProbeOptions& options) {
  check_features(train_features, train_labels, "linear probe training");
  check_features(test_features, test_labels, "linear probe test");
  ENG_CHECK(train_features.size(1) == test_features.size(1),
            "linear probe: training features have {} dimensions, test features {}", train_features.size(1),
            test_features.size(1));
  ENG_CHECK(options.epochs > 0 && options.batch_size > 0 && options.lr > 0,
            "linear probe: epochs ({}), batch size ({}) and lr ({}) must be positive", options.epochs, options.batch_size,
            options.lr);
  ENG_CHECK(options.optimizer == "adamw" || options.optimizer == "sgd",
            "linear probe: optimizer '{}' is not adamw or sgd", options.optimizer);
  ENG_CHECK(num_classes > 0, "linear probe: num_classes must be positive, got {}", num_classes);
  auto t0 = std::chrono::steady_clock::now();
  SingleThreadScope one_thread;  // batches of a few hundred rows x a few hundred features
  const int64_t n = train_features.size(0), d = train_features.size(1);
  std::vector<int64_t> train_l = checked_labels(train_labels, num_classes, "linear probe training");
  std::vector<int64_t> test_l = checked_labels(test_labels, num_classes, "linear probe test");
  Tensor y_train = train_labels.to(eng::Device::cpu()).to(DType::I64).contiguous();

  // Standardise with the training statistics: BatchNorm(affine=False) at eval time.
  Tensor x_train, x_test;
  {
    eng::NoGradGuard no_grad;
    Tensor xtr = train_features.to(eng::Device::cpu()).to(DType::F32);
    Tensor mu = eng::mean(xtr, {0}, true);
    Tensor sd = eng::sqrt(eng::add(eng::var(xtr, {0}, /*unbiased=*/false, true), 1e-6));
    x_train = eng::div(eng::sub(xtr, mu), sd).contiguous();
    x_test = eng::div(eng::sub(test_features.to(eng::Device::cpu()).to(DType::F32), mu), sd).contiguous();
  }

  eng::Generator init(options.seed, /*stream=*/0);
  Tensor w = init.normal({num_classes, d}, 0.0, 0.01).requires_grad_();
  Tensor b = Tensor::zeros({num_classes}).requires_grad_();
  std::vector<eng::ParamGroup> groups(2);
  groups[0].params = {w};
  groups[0].names = {"head.weight"};
  groups[0].weight_decay = options.weight_decay;
  groups[1].params = {b};
  groups[1].names = {"head.bias"};
  groups[1].weight_decay = 0.0;  // no decay on the bias, as MAE
  std::unique_ptr<eng::Optimizer> opt;
  if (options.optimizer == "adamw")
    opt = std::make_unique<eng::AdamW>(groups, eng::AdamWOptions{options.lr, 0.9, 0.999, 1e-8, options.weight_decay});
  else
    opt = std::make_unique<eng::SGD>(groups, eng::SGDOptions{options.lr, options.momentum, options.weight_decay, false});

  const int64_t steps_per_epoch = (n + options.batch_size - 1) / options.batch_size;
  eng::CosineSchedule sched{options.lr, 0.0, 0.0, double(options.epochs * steps_per_epoch)};
  ProbeResult r;
  for (int64_t epoch = 0; epoch < options.epochs; epoch++) {
    Tensor perm = eng::Generator(options.seed, /*stream=*/uint64_t(1 + epoch)).permutation(n);
    double loss_sum = 0;
    for (int64_t s = 0; s < steps_per_epoch; s++) {
      const int64_t start = s * options.batch_size, rows = std::min(options.batch_size, n - start);
      Tensor idx = perm.narrow(0, start, rows);
      Tensor x = eng::index_select(x_train, 0, idx);
      Tensor y = eng::index_select(y_train, 0, idx);
      Tensor loss = eng::cross_entropy(eng::linear(x, w, b), y);
      opt->zero_grad();
      loss.backward();
      opt->set_lr(sched.lr(double(r.steps)));
      opt->step();
      r.steps++;
      double lv = loss.item();
      ENG_CHECK(std::isfinite(lv), "linear probe: non-finite loss at epoch {} step {} (lr {})", epoch + 1, s + 1, opt->lr());
      loss_sum += lv * double(rows);
    }
    r.final_loss = loss_sum / double(n);
  }
  eng::NoGradGuard no_grad;
  r.train_top1 = accuracy(eng::linear(x_train, w, b), train_l);
  r.test_top1 = accuracy(eng::linear(x_test, w, b), test_l);
  r.seconds = seconds_since(t0);
  return r;
}

}  // namespace moce
