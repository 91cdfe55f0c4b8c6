// bench_train_step.cpp: the reference workload of the CPU speed work — one MAE pre-training step of
// mae_tiny_p4_32 (32x32 images, patch 4, encoder 192 x 12, decoder 128 x 4, mask ratio 0.75), batch 128,
// AdamW — timed as forward + backward + optimizer step, and forward-only feature extraction (no grad, all 64
// patches through the encoder). Prints medians over several steps after warm-up: wall time, process CPU time,
// images/s, the GEMM work done (GFLOP/s), the allocator's peak memory, and the allocations of a steady-state step.
//
// Build and run: make build/bench/bench_train_step && build/bench/bench_train_step [--batch 128] [--steps 7]
//   [--warmup 2] [--only train|forward] [--threads N] [--config NAME] [--device cpu|cuda[:N]]
//   [--precision f32|tf32|bf16]
// The PyTorch peer of the same step is bench/peer_train_step.py (make bench runs both when torch imports).
// On a GPU (make bench-gpu: MAE ViT-B/16 at 224, batch 256, bf16) each timed step ends with the loss read back, so
// it covers all the step's GPU work; the line `mfu:` gives the model FLOPs utilisation against the bf16 (or f32 /
// TF32) dense peak, measured here as the best of a few 8192^3 GEMMs through the engine (cuBLASLt).
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <string>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "model/mae.h"
#include "moce/common/device.h"
#ifdef ENGINE_WITH_CUDA
#include "engine/backends/cuda/attention_impl.h"
#endif

using namespace eng;

// Every operator new of the process is counted, so a steady-state step can show how many small heap objects
// (shapes, graph nodes, closures) it still makes; tensor storage comes from the caching allocator.
static std::atomic<long long> g_heap_allocs{0};
void* operator new(size_t n) {
  g_heap_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Resident memory of the process now, from /proc/self/statm (0 where that is missing).
static double rss_mib_now() {
  long pages_total = 0, pages_resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
    std::fclose(f);
  }
  return double(pages_resident) * double(sysconf(_SC_PAGESIZE)) / double(1 << 20);
}

static double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Multiply-adds of the linear layers and attention products of one block over `rows` tokens of `tokens` per image.
static double block_macs(int64_t images, int64_t tokens, int64_t dim, double mlp_ratio) {
  const double rows = double(images * tokens), hidden = double(dim) * mlp_ratio;
  const double linear = rows * (3.0 * dim * dim + double(dim) * dim + 2.0 * dim * hidden);
  const double attn = 2.0 * double(images) * double(tokens) * double(tokens) * double(dim);  // QK^T and PV
  return linear + attn;
}

// Forward multiply-adds of the MAE training forward (masked encoder, decoder, heads) and of feature extraction.
static double mae_forward_macs(const model::MaeConfig& c, int64_t n, double mask_ratio) {
  const int64_t L = c.num_patches(), keep = int64_t(double(L) * (1.0 - mask_ratio));
  double m = double(n * L) * double(c.patch_dim()) * double(c.embed_dim);  // patch embedding (all patches)
  m += double(c.depth) * block_macs(n, keep + 1, c.embed_dim, c.mlp_ratio);
  m += double(n * (keep + 1)) * double(c.embed_dim) * double(c.decoder_embed_dim);
  m += double(c.decoder_depth) * block_macs(n, L + 1, c.decoder_embed_dim, c.mlp_ratio);
  m += double(n * (L + 1)) * double(c.decoder_embed_dim) * double(c.patch_dim());
  return m;
}
static double features_macs(const model::MaeConfig& c, int64_t n) {
  const int64_t L = c.num_patches();
  return double(n * L) * double(c.patch_dim()) * double(c.embed_dim) +
         double(c.depth) * block_macs(n, L + 1, c.embed_dim, c.mlp_ratio);
}

// The device's dense GEMM peak in the dtype the model computes in: the best of a few 8192^3 products (TFLOP/s).
static double gemm_peak_tflops(Device dev, DType dt) {
  const int64_t n = 8192;
  Generator g(7);
  Tensor a = g.normal({n, n}, 0.0, 1.0, DType::F32, dev).to(dt), b = g.normal({n, n}, 0.0, 1.0, DType::F32, dev).to(dt);
  double best = 0;
  for (int r = 0; r < 6; r++) {
    const auto t0 = std::chrono::steady_clock::now();
    Tensor c = matmul(a, b);
    (void)sum(c.narrow(0, 0, 1)).item();  // waits for the product
    const double dt_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::max(best, 2.0 * double(n) * double(n) * double(n) / dt_s * 1e-12);
  }
  return best;
}

int main(int argc, char** argv) {
  int64_t batch = 128, steps = 7, warmup = 2;
  int threads = 0;
  std::string config = "mae_tiny_p4_32", only, device_flag = "cpu", precision = "f32";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--batch")) batch = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--config")) config = argv[i + 1];
    else if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--device")) device_flag = argv[i + 1];
    else if (!std::strcmp(argv[i], "--precision")) precision = argv[i + 1];
    else {
      std::fprintf(stderr, "bench_train_step: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  const bool do_train = only.empty() || only == "train", do_forward = only.empty() || only == "forward";
  const double mask_ratio = 0.75;
  Device dev;
  DType compute = DType::F32;
  try {
    dev = moce::device_from_flag(device_flag);
    compute = model::parse_precision(precision);
    ENG_CHECK(dev.is_cuda() || precision == "f32", "--precision {} needs --device cuda", precision);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 2;
  }
  set_cuda_tf32(precision == "tf32");
  model::MaeConfig cfg = model::mae_config(config);
  model::MaskedAutoencoder mae(cfg, 0);
  moce::move_to_device(mae, dev);
  mae.set_compute_dtype(compute);
  AdamW opt(param_groups_weight_decay(mae.named_parameters(), 0.05, {}), AdamWOptions{1.5e-4, 0.9, 0.95, 1e-8, 0.05});
  Generator g(1);
  Tensor imgs = g.normal({batch, 3, cfg.img_size, cfg.img_size}, 0.0, 1.0, DType::F32, dev);
  auto& alloc = allocator_for(dev);
  if (dev.is_cpu())
    std::printf("config %s, batch %lld, %d OpenMP threads, SGEMM kernel %s; medians of %lld steps after %lld warm-up\n",
                config.c_str(), (long long)batch, omp_get_max_threads(), cpu_sgemm_kernel_name(), (long long)steps,
                (long long)warmup);
  else
    std::printf("config %s, batch %lld, %s, precision %s; medians of %lld steps after %lld warm-up\n", config.c_str(),
                (long long)batch, dev.str().c_str(), precision.c_str(), (long long)steps, (long long)warmup);

  // One step on the given mask noise (drawn outside the timed region, as the PyTorch peer does); returns the loss.
  auto train_step = [&](const Tensor& noise) {
    model::MaeOutput out = mae.forward(imgs, noise, mask_ratio);
    out.loss.backward();
    opt.step();
    opt.zero_grad();
    return out.loss;
  };

  double step_wall = 0, step_cpu = 0, fwd_wall = 0, fwd_cpu = 0;
  const double rss_before = rss_mib_now();
  if (do_train) {
    std::vector<double> wall, cpu;
    for (int64_t s = 0; s < warmup + steps; s++) {
      if (s == warmup) alloc.reset_peak();
      Tensor noise = g.uniform({batch, cfg.num_patches()}, 0.0, 1.0, DType::F32, dev);
      if (dev.is_cuda()) (void)sum(noise).item();  // the timed step starts on an idle GPU
      const double c0 = cpu_seconds();
      const auto t0 = std::chrono::steady_clock::now();
      Tensor loss_t = train_step(noise);
      // On a GPU the read-back waits for the step's kernels, so it belongs in the timed region (on the CPU it is free).
      const double loss = loss_t.item();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double dc = cpu_seconds() - c0;
      if (s >= warmup) {
        wall.push_back(dt);
        cpu.push_back(dc);
      }
      std::fprintf(stderr, "step %lld: %.3f s (cpu %.3f s), loss %.4f\n", (long long)s, dt, dc, loss);
    }
    const size_t peak = alloc.stats().peak_bytes;
    Tensor noise = g.uniform({batch, cfg.num_patches()}, 0.0, 1.0, DType::F32, dev);
    const size_t sys_before = alloc.stats().system_allocs, req_before = alloc.stats().requests;
    const long long heap_before = g_heap_allocs.load();
    train_step(noise);  // one more step: the steady state allocates no tensor memory from the system
    const long long heap = g_heap_allocs.load() - heap_before;
    const size_t sys = alloc.stats().system_allocs - sys_before, req = alloc.stats().requests - req_before;
    step_wall = median(wall);
    step_cpu = median(cpu);
    const double gflop = 3.0 * 2.0 * mae_forward_macs(cfg, batch, mask_ratio) * 1e-9;  // backward ~ 2x forward
    std::printf("train step: %.3f s wall (cpu %.3f s), %.1f images/s, %.1f GFLOP/s (%.1f GFLOP per step)\n",
                step_wall, step_cpu, double(batch) / step_wall, gflop / step_wall, gflop);
    if (dev.is_cuda()) {
      const double peak_tflops = gemm_peak_tflops(dev, compute);
      std::printf("mfu: %.1f%% of the %s dense peak %.1f TFLOP/s (best 8192^3 GEMM); model %.1f TFLOP/s\n",
                  100.0 * gflop * 1e-3 / step_wall / peak_tflops, precision.c_str(), peak_tflops,
                  gflop * 1e-3 / step_wall);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    std::printf("peak memory of the training step: %.1f MiB (allocator peak); peak RSS growth over the steps %.0f MiB\n",
                double(peak) / (1 << 20), double(ru.ru_maxrss) / 1024.0 - rss_before);
    if (dev.is_cuda()) std::printf("gpu_peak_mib: %.0f\n", double(peak) / (1 << 20));
#ifdef ENGINE_WITH_CUDA
    if (dev.is_cuda()) {
      const eng::cuda::AttentionCounts c = eng::cuda::attention_counts();
      std::printf("attention calls: forward %lld cuDNN / %lld own, backward %lld cuDNN / %lld own (ENG_ATTENTION=%s)\n",
                  (long long)c.cudnn_forward, (long long)c.own_forward, (long long)c.cudnn_backward,
                  (long long)c.own_backward, eng::cuda::attention_impl_name(eng::cuda::attention_impl()));
      std::printf("%s\n", eng::cuda::cudnn_attention_report().c_str());
    }
#endif
    std::printf("steady-state step: %zu tensor allocations, %zu from the system; %lld small heap objects\n", req, sys,
                heap);
  }
  if (do_forward) {
    std::vector<double> wall, cpu;
    NoGradGuard ng;
    for (int64_t s = 0; s < warmup + steps; s++) {
      const double c0 = cpu_seconds();
      const auto t0 = std::chrono::steady_clock::now();
      Tensor f = mae.features(imgs);
      if (dev.is_cuda()) (void)sum(f).item();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double dc = cpu_seconds() - c0;
      if (s >= warmup) {
        wall.push_back(dt);
        cpu.push_back(dc);
      }
    }
    fwd_wall = median(wall);
    fwd_cpu = median(cpu);
    const double gflop = 2.0 * features_macs(cfg, batch) * 1e-9;
    std::printf("forward features (all %lld patches, no grad): %.3f s wall (cpu %.3f s), %.1f images/s, %.1f GFLOP/s\n",
                (long long)cfg.num_patches(), fwd_wall, fwd_cpu, double(batch) / fwd_wall, gflop / fwd_wall);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("peak RSS of the process: %.0f MiB\n", double(ru.ru_maxrss) / 1024.0);
  if (do_train) std::printf("train_step: %.1f images/s\n", double(batch) / step_wall);
  if (do_forward) std::printf("forward: %.1f images/s\n", double(batch) / fwd_wall);
  return 0;
}
