// bench_train_step.cpp: the reference workload of the CPU speed work — one MAE pre-training step of
// mae_tiny_p4_32 (32x32 images, patch 4, encoder 192 x 12, decoder 128 x 4, mask ratio 0.75), batch 128,
// AdamW — timed as forward + backward + optimizer step, and forward-only feature extraction (no grad, all 64
// patches through the encoder). Prints medians over several steps after warm-up: wall time, process CPU time,
// images/s, the GEMM work done (GFLOP/s), the allocator's peak memory, and the allocations of a steady-state step.
//
// --method picks the model (issue 13's speed comparison; the same step otherwise):
//   dense     the plain MAE (the default);
//   moce      MoCE: the MLPs of encoder blocks 10 and 11 become 8-expert MoeMlp layers under the cluster gate (top-1,
//             cluster embeddings of 192: each image gets one of 256 fixed random unit centroids, drawn per step);
//             loss = MAE loss + auxiliary losses (importance, load, imbalance; 0.01 each) + 0.01 * distillation
//             against a frozen dense copy of the model (its encoder on the same visible patches, no grad);
//             --no-distill leaves the teacher out;
//   tokenmoe  V-MoE's TokenMoE: blocks 9 and 11, 8 experts, per-token top-1 gate, capacity factor 1.05 (or
//             --capacity-factor: 8 drops nothing), auxiliary importance and load losses (0.01 each).
// The forward-only mode runs the encoder on all patches: for moce it times the deployed sub-model (one expert per
// layer, i.e. the dense ViT: that is what MoCE exports) and then the whole MoCE encoder with its gate routing images
// to all 8 experts; for tokenmoe the whole TokenMoE encoder at --eval-capacity-factor (1.05: the training value).
//
// Build and run: make build/bench/bench_train_step && build/bench/bench_train_step [--batch 128] [--steps 7]
//   [--warmup 2] [--only train|forward] [--threads N] [--config NAME] [--device cpu|cuda[:N]]
//   [--precision f32|tf32|bf16] [--method dense|moce|tokenmoe] [--no-distill] [--capacity-factor CF]
//   [--eval-capacity-factor CF]
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
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "model/mae.h"
#include "moce/common/device.h"
#include "moce/experts/losses.h"
#include "moce/experts/moe_mlp.h"
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
  std::string config = "mae_tiny_p4_32", only, device_flag = "cpu", precision = "f32", method = "dense";
  bool distill = true;
  double eval_capacity_factor = 1.05, train_capacity_factor = 1.05;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--no-distill")) {
      distill = false;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_train_step: flag %s needs a value\n", argv[i]);
      return 2;
    }
    const char* value = argv[++i];
    if (!std::strcmp(argv[i - 1], "--batch")) batch = std::atoll(value);
    else if (!std::strcmp(argv[i - 1], "--steps")) steps = std::atoll(value);
    else if (!std::strcmp(argv[i - 1], "--warmup")) warmup = std::atoll(value);
    else if (!std::strcmp(argv[i - 1], "--config")) config = value;
    else if (!std::strcmp(argv[i - 1], "--only")) only = value;
    else if (!std::strcmp(argv[i - 1], "--threads")) threads = std::atoi(value);
    else if (!std::strcmp(argv[i - 1], "--device")) device_flag = value;
    else if (!std::strcmp(argv[i - 1], "--precision")) precision = value;
    else if (!std::strcmp(argv[i - 1], "--method")) method = value;
    else if (!std::strcmp(argv[i - 1], "--eval-capacity-factor")) eval_capacity_factor = std::atof(value);
    else if (!std::strcmp(argv[i - 1], "--capacity-factor")) train_capacity_factor = std::atof(value);
    else {
      std::fprintf(stderr, "bench_train_step: unknown flag %s\n", argv[i - 1]);
      return 2;
    }
  }
  if (method != "dense" && method != "moce" && method != "tokenmoe") {
    std::fprintf(stderr, "bench_train_step: --method %s: expected dense, moce or tokenmoe\n", method.c_str());
    return 2;
  }
  if (!(eval_capacity_factor > 0) || !(train_capacity_factor > 0)) {
    std::fprintf(stderr, "bench_train_step: --capacity-factor %g and --eval-capacity-factor %g must be positive\n",
                 train_capacity_factor, eval_capacity_factor);
    return 2;
  }
  if (only != "" && only != "train" && only != "forward") {
    std::fprintf(stderr, "bench_train_step: --only %s: expected train or forward\n", only.c_str());
    return 2;
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
  // The expert layers go into the last encoder blocks (mae_tiny_p4_32 has 12: MoCE 10 and 11, TokenMoE 9 and 11).
  namespace ex = moce::experts;
  const int64_t depth = int64_t(mae.blocks.size());
  std::vector<std::shared_ptr<ex::MoeMlp>> moe_layers;
  std::unique_ptr<model::MaskedAutoencoder> teacher;  // MoCE's distillation teacher: the dense model, frozen
  Tensor centroids;                                   // MoCE: 256 fixed random unit cluster embeddings [256, 192]
  const int64_t num_clusters = 256, cluster_dim = 192;
  if (method != "dense") {
    ENG_CHECK(depth >= 3, "bench_train_step: --method {} needs at least 3 encoder blocks, config {} has {}", method,
              config, depth);
    ex::MoeOptions o;
    o.num_experts = 8;
    o.top_k = 1;
    if (method == "moce") {
      if (distill) {
        teacher = std::make_unique<model::MaskedAutoencoder>(cfg, 0);  // seed 0: the same weights as mae before the swap
        moce::move_to_device(*teacher, dev);
        teacher->set_compute_dtype(compute);
      }
      o.gate = ex::GateKind::Moce;
      o.cluster_dim = cluster_dim;
      moe_layers = ex::install_moe_mlps(mae.blocks, {depth - 2, depth - 1}, o);
      Generator cg(3);
      Tensor c = cg.normal({num_clusters, cluster_dim}, 0.0, 1.0, DType::F32, dev);
      centroids = c * rsqrt(sum(c * c, {1}, true));
    } else {
      o.gate = ex::GateKind::Token;
      o.capacity_factor = train_capacity_factor;
      moe_layers = ex::install_moe_mlps(mae.blocks, {depth - 3, depth - 1}, o);
    }
  }
  AdamW opt(param_groups_weight_decay(mae.named_parameters(), 0.05, {}), AdamWOptions{1.5e-4, 0.9, 0.95, 1e-8, 0.05});
  Generator g(1);
  Tensor imgs = g.normal({batch, 3, cfg.img_size, cfg.img_size}, 0.0, 1.0, DType::F32, dev);
  auto& alloc = allocator_for(dev);
  std::printf("method %s%s\n", method.c_str(),
              method == "moce"       ? (distill ? " (8 experts in blocks 10, 11; aux + distillation)" : " (8 experts in blocks 10, 11; aux, no distillation)")
              : method == "tokenmoe" ? " (8 experts in blocks 9, 11; aux)"
                                     : "");
  if (method == "tokenmoe") std::printf("tokenmoe capacity factor %.2f in training\n", train_capacity_factor);
  if (dev.is_cpu())
    std::printf("config %s, batch %lld, %d OpenMP threads, SGEMM kernel %s; medians of %lld steps after %lld warm-up\n",
                config.c_str(), (long long)batch, omp_get_max_threads(), cpu_sgemm_kernel_name(), (long long)steps,
                (long long)warmup);
  else
    std::printf("config %s, batch %lld, %s, precision %s; medians of %lld steps after %lld warm-up\n", config.c_str(),
                (long long)batch, dev.str().c_str(), precision.c_str(), (long long)steps, (long long)warmup);

  // MoCE's per-batch input beside the images: each image's cluster embedding (one of the fixed centroids, seeded per
  // step), looked up outside the timed region as a data loader would; the gate noise's offset follows the step.
  Generator cluster_draw(4);
  auto feed_moe_layers = [&](uint64_t step, bool training) {
    for (auto& layer : moe_layers) {
      layer->set_training(training);
      layer->set_step(step);
    }
    if (method != "moce") return;
    std::vector<float> u = cluster_draw.uniform({batch}, 0.0, 1.0, DType::F32).to_vector<float>();
    std::vector<int64_t> ids(u.size());
    for (size_t i = 0; i < u.size(); i++) ids[i] = std::min<int64_t>(int64_t(u[i] * float(num_clusters)), num_clusters - 1);
    Tensor emb = index_select(centroids, 0, Tensor::from_vector(ids, {batch}).to(dev));
    for (auto& layer : moe_layers) layer->set_cluster_embeddings(emb);
  };
  const ex::AuxLossWeights aux_weights{0.01, 0.01, method == "moce" ? 0.01 : 0.0};
  const double distill_weight = 0.01;

  // One step on the given mask noise (drawn outside the timed region, as the PyTorch peer does); returns the loss.
  auto train_step = [&](const Tensor& noise) {
    model::MaeOutput out = mae.forward(imgs, noise, mask_ratio);
    Tensor loss = out.loss;
    if (!moe_layers.empty()) loss = add(loss, ex::auxiliary_loss(moe_layers, aux_weights));
    if (teacher) {
      Tensor target;
      {
        NoGradGuard ng;
        target = teacher->encode_masked(imgs, noise, mask_ratio).latent;
      }
      loss = add(loss, mul(ex::distillation_loss(target, out.latent), distill_weight));
    }
    loss.backward();
    opt.step();
    opt.zero_grad();
    return loss;
  };

  double step_wall = 0, step_cpu = 0, fwd_wall = 0, fwd_cpu = 0;
  const double rss_before = rss_mib_now();
  if (do_train) {
    std::vector<double> wall, cpu;
    for (int64_t s = 0; s < warmup + steps; s++) {
      if (s == warmup) alloc.reset_peak();
      Tensor noise = g.uniform({batch, cfg.num_patches()}, 0.0, 1.0, DType::F32, dev);
      feed_moe_layers(uint64_t(s), true);
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
    feed_moe_layers(uint64_t(warmup + steps), true);
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
    for (size_t l = 0; l < moe_layers.size(); l++) {
      const ex::MoeStats& st = moe_layers[l]->stats();
      double busiest = 0;
      for (double share : st.expert_load) busiest = std::max(busiest, share);
      std::printf("moe layer %zu (last step): busiest expert %.1f%% of the choices, %.2f%% dropped by the capacity\n", l,
                  100.0 * busiest, 100.0 * st.dropped_fraction);
    }
    std::printf("steady-state step: %zu tensor allocations, %zu from the system; %lld small heap objects\n", req, sys,
                heap);
  }
  double routed_wall = 0;
  if (do_forward) {
    NoGradGuard ng;
    // Median wall and CPU seconds of feature extraction (all patches through the encoder) by `m`.
    auto time_forward = [&](const model::MaskedAutoencoder& m, double& wall_s, double& cpu_s) {
      std::vector<double> wall, cpu;
      for (int64_t s = 0; s < warmup + steps; s++) {
        const double c0 = cpu_seconds();
        const auto t0 = std::chrono::steady_clock::now();
        Tensor f = m.features(imgs);
        if (dev.is_cuda()) (void)sum(f).item();
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double dc = cpu_seconds() - c0;
        if (s >= warmup) {
          wall.push_back(dt);
          cpu.push_back(dc);
        }
      }
      wall_s = median(wall);
      cpu_s = median(cpu);
    };
    const double gflop = 2.0 * features_macs(cfg, batch) * 1e-9;  // top-1 experts: the dense model's GEMMs (+ gate)
    auto report = [&](const char* what, double wall_s, double cpu_s) {
      std::printf("forward features, %s (all %lld patches, no grad): %.3f s wall (cpu %.3f s), %.1f images/s, %.1f GFLOP/s\n",
                  what, (long long)cfg.num_patches(), wall_s, cpu_s, double(batch) / wall_s, gflop / wall_s);
    };
    if (method == "moce") {
      // What MoCE deploys: one expert per MoE layer, chosen by the task's cluster, i.e. a plain ViT of the dense
      // architecture (the expert's weights in the dense MLP's place). Timed on the dense model: same shapes, same ops.
      std::unique_ptr<model::MaskedAutoencoder> fresh;
      const model::MaskedAutoencoder* sub = teacher.get();
      if (!sub) {
        fresh = std::make_unique<model::MaskedAutoencoder>(cfg, 0);
        moce::move_to_device(*fresh, dev);
        fresh->set_compute_dtype(compute);
        sub = fresh.get();
      }
      time_forward(*sub, fwd_wall, fwd_cpu);
      report("MoCE sub-model = dense ViT", fwd_wall, fwd_cpu);
      // Before export: the whole MoCE encoder, its gate sending each image (all its tokens) to one of the 8 experts.
      feed_moe_layers(0, false);
      double routed_cpu = 0;
      time_forward(mae, routed_wall, routed_cpu);
      report("whole MoCE model, 8 experts routed per image", routed_wall, routed_cpu);
    } else {
      for (auto& layer : moe_layers) layer->set_capacity_factor(eval_capacity_factor);
      feed_moe_layers(0, false);
      time_forward(mae, fwd_wall, fwd_cpu);
      report(method == "dense" ? "dense" : "whole TokenMoE model", fwd_wall, fwd_cpu);
      if (method == "tokenmoe")
        std::printf("tokenmoe eval capacity factor %.2f: capacity %lld tokens per expert, %.2f%% of tokens dropped\n",
                    eval_capacity_factor, (long long)moe_layers.back()->stats().capacity,
                    100.0 * moe_layers.back()->stats().dropped_fraction);
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("peak RSS of the process: %.0f MiB\n", double(ru.ru_maxrss) / 1024.0);
  if (do_train) std::printf("train_step: %.1f images/s\n", double(batch) / step_wall);
  if (do_train) std::printf("train_step_ms: %.1f ms\n", 1e3 * step_wall);
  // The process's CPU time per step (all threads): the work done, less moved than wall time by other jobs' load.
  if (do_train) std::printf("train_step_cpu_ms: %.1f ms\n", 1e3 * step_cpu);
  if (do_forward) std::printf("forward: %.1f images/s\n", double(batch) / fwd_wall);
  if (do_forward && method == "moce") std::printf("forward_routed: %.1f images/s\n", double(batch) / routed_wall);
  return 0;
}
