// bench_train_step.cpp: the reference workload of the CPU speed work — one MAE pre-training step of
// mae_tiny_p4_32 (32x32 images, patch 4, encoder 192 x 12, decoder 128 x 4, mask ratio 0.75), batch 128,
// AdamW — timed as forward + backward + optimizer step, and forward-only feature extraction (no grad).
// Prints medians over several steps after warm-up, images/s, GFLOP/s and the allocator's peak memory.
//
// Build and run: make build/bench/bench_train_step && build/bench/bench_train_step [--batch 128] [--steps 5]
// The PyTorch peer of the same step is bench/peer_train_step.py (make bench runs both when torch imports).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/optim.h"
#include "model/mae.h"

using namespace eng;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  int64_t batch = 128, steps = 5, warmup = 2;
  std::string config = "mae_tiny_p4_32";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--batch")) batch = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--config")) config = argv[i + 1];
  }
  model::MaeConfig cfg = model::mae_config(config);
  model::MaskedAutoencoder mae(cfg, 0);
  AdamW opt(param_groups_weight_decay(mae.named_parameters(), 0.05, {}), AdamWOptions{1.5e-4, 0.9, 0.95, 1e-8, 0.05});
  Generator g(1);
  Tensor imgs = g.normal({batch, 3, cfg.img_size, cfg.img_size});
  auto& alloc = allocator_for(Device::cpu());

  std::vector<double> step_s;
  for (int64_t s = 0; s < warmup + steps; s++) {
    Tensor noise = g.uniform({batch, cfg.num_patches()});
    if (s == warmup) alloc.reset_peak();
    auto t0 = std::chrono::steady_clock::now();
    model::MaeOutput out = mae.forward(imgs, noise, 0.75);
    out.loss.backward();
    opt.step();
    opt.zero_grad();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) step_s.push_back(dt);
    std::fprintf(stderr, "step %lld: %.3f s, loss %.4f\n", (long long)s, dt, out.loss.item());
  }
  size_t peak = alloc.stats().peak_bytes;
  size_t sys_before = alloc.stats().system_allocs;
  {  // one more step to confirm the steady state allocates nothing from the system
    Tensor noise = g.uniform({batch, cfg.num_patches()});
    model::MaeOutput out = mae.forward(imgs, noise, 0.75);
    out.loss.backward();
    opt.step();
    opt.zero_grad();
  }
  size_t sys_after = alloc.stats().system_allocs;

  std::vector<double> fwd_s;
  {
    NoGradGuard ng;
    for (int64_t s = 0; s < warmup + steps; s++) {
      auto t0 = std::chrono::steady_clock::now();
      Tensor f = mae.features(imgs);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s >= warmup) fwd_s.push_back(dt);
    }
  }
  double ms = median(step_s), mf = median(fwd_s);
  std::printf("config %s, batch %lld, %lld timed steps (median)\n", config.c_str(), (long long)batch, (long long)steps);
  std::printf("train step: %.3f s, %.1f images/s\n", ms, double(batch) / ms);
  std::printf("forward features (all 64 patches, no grad): %.3f s, %.1f images/s\n", mf, double(batch) / mf);
  std::printf("peak memory (allocator, training step): %.1f MiB; system allocations in a steady-state step: %zu\n",
              double(peak) / (1 << 20), sys_after - sys_before);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("peak RSS of the process: %.0f MiB\n", double(ru.ru_maxrss) / 1024.0);
  std::printf("train_step: %.1f images/s\n", double(batch) / ms);
  std::printf("forward: %.1f images/s\n", double(batch) / mf);
  return 0;
}
