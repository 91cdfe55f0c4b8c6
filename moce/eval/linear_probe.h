// linear_probe.h: a linear classifier on frozen, standardised features (train mean / std; MAE puts a BatchNorm
// without affine before its head, which is the same map at eval time). Deterministic: the head's init and the
// per-epoch shuffle come from a Philox generator.
#pragma once
#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace moce {

struct ProbeOptions {
  int64_t epochs = 100;
  int64_t batch_size = 256;
  std::string optimizer = "adamw";  // "adamw" or "sgd" (with momentum)
  double lr = 1e-2;                 // peak; cosine decay to 0 over the run, no warm-up
  double weight_decay = 0.0;
  double momentum = 0.9;            // sgd only
  uint64_t seed = 0;                // head init and the per-epoch shuffle
};

struct ProbeResult {
  double train_top1 = 0, test_top1 = 0;  // fractions in [0, 1]
  double final_loss = 0;                 // mean training loss of the last epoch
  int64_t steps = 0;
  double seconds = 0;
};

// Standardises both sets with the training features' mean and (population) standard deviation per
// dimension (+1e-6), then trains logits = x W^T + b (W ~ N(0, 0.01), b = 0) with cross-entropy.
// Epoch e visits the training rows in the order Generator(seed, stream = 1 + e).permutation(N); the last
// batch of an epoch may be smaller.
ProbeResult linear_probe(const eng::Tensor& train_features, const eng::Tensor& train_labels,
                         const eng::Tensor& test_features, const eng::Tensor& test_labels, int64_t num_classes,
                         const ProbeOptions& options = {});

}  // namespace moce
