// bench_gpu.cpp: the CUDA backend's speed, each number beside a peer measured in the same run on the same GPU.
//   GEMM     TFLOP/s of CudaBackend::gemm (cuBLASLt through the engine: heuristic algorithm, f32 / TF32 / bf16)
//            beside cuBLAS's best: every algorithm cuBLASLt's heuristic offers for the same problem (up to 16)
//            timed directly, the fastest kept.
//   memory   achieved GB/s of the memory-bound kernels (elementwise, broadcast, strided copy, reductions,
//            softmax, layer norm, AdamW, gather) beside a device-to-device cudaMemcpy of the same size; bytes
//            counted as the minimum each kernel must read and write.
// Timings: CUDA events around 10 launches, median of 7 runs after 3 warm-up runs. The last lines read
// `name: value unit (ratio vs peer)`. Without a GPU (or without the CUDA backend) it says so and exits 0.
// Build and run: make bench-gpu   (Nsight: make profile, then nsys/ncu on build-profile/bench/bench_gpu)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/rng.h"

#ifdef ENGINE_WITH_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "engine/backends/cuda/attention_impl.h"
#endif

#ifndef ENGINE_WITH_CUDA
int main() {
  std::printf("bench_gpu: skipped: this build has no CUDA backend (nvcc and cuBLAS were not found)\n");
  return 0;
}
#else

namespace {

using eng::DType;
using eng::Tensor;

#define BENCH_CUDA(call)                                                                                      \
  do {                                                                                                        \
    cudaError_t e_ = (call);                                                                                  \
    if (e_ != cudaSuccess) {                                                                                  \
      std::fprintf(stderr, "bench_gpu: %s failed at %s:%d: %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                                           \
    }                                                                                                         \
  } while (0)
#define BENCH_CUBLAS(call)                                                                                    \
  do {                                                                                                        \
    cublasStatus_t s_ = (call);                                                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                        \
      std::fprintf(stderr, "bench_gpu: %s failed at %s:%d: %s\n", #call, __FILE__, __LINE__, cublasGetStatusName(s_)); \
      std::exit(1);                                                                                           \
    }                                                                                                         \
  } while (0)

constexpr int kWarmup = 3, kRuns = 7, kInner = 10;

// Median seconds per call of f (kInner calls per timed run).
double time_it(const std::function<void()>& f) {
  cudaEvent_t a, b;
  BENCH_CUDA(cudaEventCreate(&a));
  BENCH_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < kWarmup; i++) f();
  std::vector<double> t;
  for (int r = 0; r < kRuns; r++) {
    BENCH_CUDA(cudaEventRecord(a, 0));
    for (int i = 0; i < kInner; i++) f();
    BENCH_CUDA(cudaEventRecord(b, 0));
    BENCH_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(double(ms) * 1e-3 / kInner);
  }
  BENCH_CUDA(cudaEventDestroy(a));
  BENCH_CUDA(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Tensor randn(const eng::Shape& s, DType dt, uint64_t seed) {
  eng::Generator g(seed);
  return g.normal(s, 0.0, 1.0, DType::F32, eng::Device::cuda()).to(dt);
}

struct Line {
  std::string name, unit;
  double value, peer;
};
std::vector<Line> g_summary;
std::map<std::string, double> g_square_best;  // cuBLASLt's best TFLOP/s on the 4096^3 square, per mode

// ---------------------------------------------------------------- GEMM

struct GemmShape {
  const char* name;
  int64_t m, n, k;
  bool trans_a, trans_b;
};

// The best time cuBLASLt can do for row-major C = op(A) op(B) (as the engine maps it: C^T = op(B)^T op(A)^T).
double cublaslt_best(cublasLtHandle_t lt, void* ws, size_t ws_bytes, DType dt, bool tf32, const GemmShape& s,
                     const void* a, const void* b, void* c) {
  const cudaDataType_t type = dt == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  cublasLtMatmulDesc_t desc;
  BENCH_CUBLAS(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F));
  const cublasOperation_t op1 = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)));
  BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)));
  const int64_t lda = s.trans_a ? s.m : s.k, ldb = s.trans_b ? s.k : s.n;
  cublasLtMatrixLayout_t la, lb, lc;
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&la, type, s.trans_b ? s.k : s.n, s.trans_b ? s.n : s.k, ldb));
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lb, type, s.trans_a ? s.m : s.k, s.trans_a ? s.k : s.m, lda));
  BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lc, type, s.n, s.m, s.n));
  cublasLtMatmulPreference_t pref;
  BENCH_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t wsb = ws_bytes;
  BENCH_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
  cublasLtMatmulHeuristicResult_t results[16];
  int returned = 0;
  BENCH_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 16, results, &returned));
  const float alpha = 1.0f, beta = 0.0f;
  double best = INFINITY;
  for (int i = 0; i < returned; i++) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    const double t = time_it([&] {
      BENCH_CUBLAS(cublasLtMatmul(lt, desc, &alpha, b, la, a, lb, &beta, c, lc, c, lc, &results[i].algo, ws, ws_bytes, 0));
    });
    best = std::min(best, t);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  return best;
}

void bench_gemm() {
  const GemmShape shapes[] = {
      {"square 4096", 4096, 4096, 4096, false, false},
      {"vit-b fc1 fwd", 8192, 3072, 768, false, true},   // X W^T
      {"vit-b fc1 dW", 3072, 768, 8192, true, false},    // dY^T X
      {"vit-b qkv fwd", 8192, 2304, 768, false, true},
  };
  struct Mode {
    const char* name;
    DType dt;
    bool tf32;
  };
  const Mode modes[] = {{"f32", DType::F32, false}, {"tf32", DType::F32, true}, {"bf16", DType::BF16, false}};
  cublasLtHandle_t lt;
  BENCH_CUBLAS(cublasLtCreate(&lt));
  const size_t ws_bytes = size_t(32) << 20;
  void* ws = nullptr;
  BENCH_CUDA(cudaMalloc(&ws, ws_bytes));
  eng::Backend& be = eng::backend_for(eng::Device::cuda());
  std::printf("\nGEMM (TFLOP/s)                        m      n      k  op   mode      ours   cublas best   ratio\n");
  for (const Mode& mode : modes) {
    for (const GemmShape& s : shapes) {
      Tensor a = randn({s.trans_a ? s.k : s.m, s.trans_a ? s.m : s.k}, mode.dt, 1);
      Tensor b = randn({s.trans_b ? s.n : s.k, s.trans_b ? s.k : s.n}, mode.dt, 2);
      Tensor c = Tensor::zeros({s.m, s.n}, mode.dt, eng::Device::cuda());
      eng::GemmArgs g;
      g.dtype = mode.dt;
      g.trans_a = s.trans_a;
      g.trans_b = s.trans_b;
      g.m = s.m;
      g.n = s.n;
      g.k = s.k;
      g.a = a.raw_data();
      g.lda = a.size(1);
      g.b = b.raw_data();
      g.ldb = b.size(1);
      g.c = c.raw_data();
      g.ldc = s.n;
      eng::set_cuda_tf32(mode.tf32);
      const double ours = time_it([&] { be.gemm(g); });
      const double best = cublaslt_best(lt, ws, ws_bytes, mode.dt, mode.tf32, s, a.raw_data(), b.raw_data(), c.raw_data());
      const double flop = 2.0 * double(s.m) * double(s.n) * double(s.k);
      const double t_ours = flop / ours * 1e-12, t_best = flop / best * 1e-12;
      std::printf("%-32s %6lld %6lld %6lld  %c%c   %-5s %8.1f %12.1f %7.2fx\n", s.name, (long long)s.m, (long long)s.n,
                  (long long)s.k, s.trans_a ? 'T' : 'N', s.trans_b ? 'T' : 'N', mode.name, t_ours, t_best, t_ours / t_best);
      g_summary.push_back({std::string("gemm ") + mode.name + " " + s.name, "TFLOP/s", t_ours, t_best});
      if (s.m == 4096 && s.n == 4096) g_square_best[mode.name] = t_best;
    }
  }
  eng::set_cuda_tf32(false);
  BENCH_CUDA(cudaFree(ws));
  cublasLtDestroy(lt);
}

// ---------------------------------------------------------------- attention

// The fused attention of the ViT-B/16 MAE step (batch 256): the encoder's 50 tokens x 12 heads of 64, the
// decoder's 197 tokens x 16 heads of 32. Forward: QK^T and PV; backward: the scores again, dP, dV, dQ, dK. TFLOP/s
// against cuBLASLt's best on the 4096^3 square in the same dtype. bf16 runs twice: the engine's tensor-core kernels,
// then the default choice (cuDNN's fused attention where it runs, attention_impl.h); f32 runs the scalar kernels,
// against the f32 GEMM.
void bench_attention() {
  struct Shape {
    const char* name;
    int64_t b, h, t, d;
  };
  const Shape shapes[] = {{"vit-b encoder (50 tokens)", 256, 12, 50, 64}, {"vit-b decoder (197 tokens)", 256, 16, 197, 32}};
  eng::Backend& be = eng::backend_for(eng::Device::cuda());
  using eng::cuda::AttentionImpl;
  std::printf("\nattention (TFLOP/s)                    batch heads tokens dim  impl        fwd     bwd   vs GEMM peak\n");
  struct Mode {
    DType dt;
    AttentionImpl impl;  // Auto: cuDNN where it runs (the row says which ran each direction)
  };
  std::vector<Mode> modes = {{DType::BF16, AttentionImpl::Own}};
  if (eng::cuda::cudnn_attention_compiled()) modes.push_back({DType::BF16, AttentionImpl::Auto});
  modes.push_back({DType::F32, AttentionImpl::Own});
  for (const Mode& m : modes) {
    const DType dt = m.dt;
    const char* dtype = dt == DType::BF16 ? "bf16" : "f32";
    const double peak = g_square_best.count(dtype) ? g_square_best[dtype] : 0.0;
    eng::cuda::AttentionImplScope impl_scope(m.impl);
    for (const Shape& s : shapes) {
      Tensor q = randn({s.b, s.h, s.t, s.d}, dt, 11), k = randn({s.b, s.h, s.t, s.d}, dt, 12);
      Tensor v = randn({s.b, s.h, s.t, s.d}, dt, 13), dout = randn({s.b, s.h, s.t, s.d}, dt, 14);
      Tensor out = Tensor::empty(q.shape(), dt, eng::Device::cuda());
      Tensor lse = Tensor::empty({s.b, s.h, s.t}, DType::F32, eng::Device::cuda());
      Tensor dq = Tensor::empty(q.shape(), dt, eng::Device::cuda()), dk = Tensor::empty(q.shape(), dt, eng::Device::cuda());
      Tensor dv = Tensor::empty(q.shape(), dt, eng::Device::cuda());
      eng::AttentionArgs a;
      a.dtype = dt;
      a.batch = s.b;
      a.heads = s.h;
      a.tq = a.tk = s.t;
      a.head_dim = a.v_dim = s.d;
      a.scale = 1.0 / std::sqrt(double(s.d));
      a.q = q.raw_data();
      a.k = k.raw_data();
      a.v = v.raw_data();
      a.out = out.raw_data();
      a.lse = lse.raw_data();
      a.dout = dout.raw_data();
      a.dq = dq.raw_data();
      a.dk = dk.raw_data();
      a.dv = dv.raw_data();
      const double product = 2.0 * double(s.b * s.h) * double(s.t) * double(s.t) * double(s.d);
      const eng::cuda::AttentionCounts c0 = eng::cuda::attention_counts();
      const double fwd = 2.0 * product / time_it([&] { be.attention_forward(a); }) * 1e-12;
      const eng::cuda::AttentionCounts c1 = eng::cuda::attention_counts();
      const double bwd = 5.0 * product / time_it([&] { be.attention_backward(a); }) * 1e-12;
      const eng::cuda::AttentionCounts c2 = eng::cuda::attention_counts();
      // Which implementation ran (the timed calls are all the same one after the first, checked call).
      const bool cudnn_fwd = c1.cudnn_forward > c0.cudnn_forward, cudnn_bwd = c2.cudnn_backward > c1.cudnn_backward;
      const std::string impl = std::string(dtype) + " " + (cudnn_fwd ? "cudnn" : "own") + "/" + (cudnn_bwd ? "cudnn" : "own");
      std::printf("%-38s %5lld %5lld %6lld %3lld  %-10s %7.1f %7.1f   %5.1f%% / %.1f%%\n", s.name, (long long)s.b,
                  (long long)s.h, (long long)s.t, (long long)s.d, impl.c_str(), fwd, bwd,
                  peak > 0 ? 100.0 * fwd / peak : 0.0, peak > 0 ? 100.0 * bwd / peak : 0.0);
      g_summary.push_back({std::string("attention fwd ") + dtype + " " + (cudnn_fwd ? "cudnn " : "own ") + s.name,
                           "TFLOP/s", fwd, peak});
      g_summary.push_back({std::string("attention bwd ") + dtype + " " + (cudnn_bwd ? "cudnn " : "own ") + s.name,
                           "TFLOP/s", bwd, peak});
    }
  }
  std::printf("%s\n", eng::cuda::cudnn_attention_report().c_str());
}

// ---------------------------------------------------------------- memory-bound kernels

void bench_memory() {
  const int64_t n = int64_t(64) << 20;  // 64 Mi elements (256 MiB in f32)
  eng::Backend& be = eng::backend_for(eng::Device::cuda());
  Tensor x = randn({n}, DType::F32, 3), y = randn({n}, DType::F32, 4), out = Tensor::empty({n}, DType::F32, eng::Device::cuda());
  const double copy_t = time_it([&] {
    BENCH_CUDA(cudaMemcpyAsync(out.raw_data(), x.raw_data(), size_t(n) * 4, cudaMemcpyDeviceToDevice, 0));
  });
  const double copy_gbs = 2.0 * double(n) * 4 / copy_t * 1e-9;
  std::printf("\nmemory-bound kernels (GB/s)                     bytes moved      GB/s   vs D2D copy (%.0f GB/s)\n", copy_gbs);
  auto report = [&](const char* name, double bytes, const std::function<void()>& f) {
    const double gbs = bytes / time_it(f) * 1e-9;
    std::printf("%-44s %12.0f MB %9.0f %9.2fx\n", name, bytes * 1e-6, gbs, gbs / copy_gbs);
    g_summary.push_back({std::string("bandwidth ") + name, "GB/s", gbs, copy_gbs});
  };
  const double b4 = double(n) * 4;
  auto d = [](const Tensor& t) { return eng::desc_of(t); };
  report("add f32 (contiguous)", 3 * b4, [&] { be.binary(eng::BinaryOp::Add, d(out), d(x), d(y)); });
  report("exp f32", 2 * b4, [&] { be.unary(eng::UnaryOp::Exp, d(out), d(x), {}); });
  report("gelu f32", 2 * b4, [&] { be.unary(eng::UnaryOp::Gelu, d(out), d(x), {}); });
  const int64_t rows768 = n / 768;  // whole rows of 768 (ViT-B width) that fit in n
  const double b768 = double(rows768 * 768) * 4;
  Tensor rows = x.narrow(0, 0, rows768 * 768).view({rows768, 768}), bias = randn({768}, DType::F32, 5);
  Tensor out2 = out.narrow(0, 0, rows768 * 768).view({rows768, 768});
  report("bias add [rows, 768] + [768]", 2 * b768, [&] {
    be.binary(eng::BinaryOp::Add, d(out2), d(rows), d(bias.expand({rows768, 768})));
  });
  Tensor sq = x.view({8192, 8192});
  report("transpose copy 8192 x 8192", 2 * b4, [&] { be.copy(d(out.view({8192, 8192})), d(sq.t())); });
  Tensor xb = Tensor::empty({n}, DType::BF16, eng::Device::cuda());
  report("convert f32 -> bf16", 1.5 * b4, [&] { be.copy(d(xb), d(x)); });
  Tensor red = Tensor::empty({n / 1024, 1}, DType::F32, eng::Device::cuda());
  report("sum over rows of 1024", b4, [&] { be.reduce(eng::ReduceOp::Sum, d(red), d(x.view({n / 1024, 1024}))); });
  Tensor colsum = Tensor::empty({1, 768}, DType::F32, eng::Device::cuda());
  report("sum over dim 0 of [rows, 768] (bias grad)", b768, [&] { be.reduce(eng::ReduceOp::Sum, d(colsum), d(rows)); });
  Tensor all = Tensor::empty({1}, DType::F32, eng::Device::cuda());
  report("sum of everything", b4, [&] { be.reduce(eng::ReduceOp::Sum, d(all), d(x)); });
  report("softmax rows of 1024", 2 * b4,
         [&] { be.softmax_forward(DType::F32, out.raw_data(), x.raw_data(), n / 1024, 1024, 1.0, false); });
  report("softmax rows of 197 (ViT attention)", 2 * b4 * (double(n / 197 * 197) / double(n)),
         [&] { be.softmax_forward(DType::F32, out.raw_data(), x.raw_data(), n / 197, 197, 0.125, false); });
  Tensor mean = Tensor::empty({rows768}, DType::F32, eng::Device::cuda()), rstd = Tensor::empty({rows768}, DType::F32, eng::Device::cuda());
  Tensor w = randn({768}, DType::F32, 6);
  report("layer_norm rows of 768", 2 * b768, [&] {
    be.layer_norm_forward(DType::F32, out.raw_data(), mean.raw_data(), rstd.raw_data(), x.raw_data(), w.raw_data(),
                          bias.raw_data(), rows768, 768, 1e-6);
  });
  const int64_t np = n / 4;
  Tensor p = randn({np}, DType::F32, 7), g = randn({np}, DType::F32, 8);
  Tensor m = Tensor::zeros({np}, DType::F32, eng::Device::cuda()), v = Tensor::zeros({np}, DType::F32, eng::Device::cuda());
  eng::AdamWArgs args{1e-4, 0.9, 0.999, 1e-8, 0.05, 10};
  report("adamw (16 Mi params: 4 reads, 3 writes)", 7.0 * double(np) * 4, [&] {
    be.adamw_update(DType::F32, p.raw_data(), g.raw_data(), m.raw_data(), v.raw_data(), np, args);
  });
  // The optimizer step of a whole model: 16 Mi parameters in 200 tensors of uneven sizes, as the training loop
  // runs it (global norm, then the multi-tensor update with clipping decided on the device).
  std::vector<Tensor> mp, mg, mm, mv;
  std::vector<eng::AdamWTensor> multi;
  std::vector<eng::SumSquaresTensor> norms;
  for (int i = 0, left = int(np); i < 200; i++) {
    const int64_t sz = i == 199 ? left : std::max<int64_t>(1, (int64_t(np) / 150) * ((i * 37) % 100) / 100);
    left -= int(sz);
    mp.push_back(p.narrow(0, np - left - sz, sz));
    mg.push_back(g.narrow(0, np - left - sz, sz));
    mm.push_back(m.narrow(0, np - left - sz, sz));
    mv.push_back(v.narrow(0, np - left - sz, sz));
    multi.push_back({mp.back().raw_data(), mg.back().raw_data(), mm.back().raw_data(), mv.back().raw_data(), sz, args});
    norms.push_back({mg.back().raw_data(), sz});
  }
  Tensor norm = Tensor::zeros({}, DType::F64, eng::Device::cuda());
  report("global norm (16 Mi grads in 200 tensors)", double(np) * 4,
         [&] { be.global_norm(DType::F32, norms, static_cast<double*>(norm.raw_data())); });
  report("adamw multi-tensor, clipped (200 tensors)", 7.0 * double(np) * 4, [&] {
    be.adamw_update_multi(DType::F32, multi, eng::AdamWClip{static_cast<const double*>(norm.raw_data()), 1.0});
  });
  Tensor table = randn({50000, 768}, DType::F32, 9);
  eng::Generator gi(10);
  Tensor ids = gi.uniform({32768}, 0.0, 49999.0, DType::F32, eng::Device::cuda()).to(DType::I64);
  Tensor gathered = Tensor::empty({32768, 768}, DType::F32, eng::Device::cuda());
  report("index_select 32768 rows of 768", 2.0 * 32768 * 768 * 4,
         [&] { be.index_select(d(gathered), d(table), 0, d(ids)); });
}

}  // namespace

int main() {
  if (!eng::cuda_available()) {
    std::printf("bench_gpu: skipped: no CUDA GPU visible\n");
    return 0;
  }
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("bench_gpu on %s (sm_%d%d, %d SMs, %.0f GiB)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              double(prop.totalGlobalMem) / double(1 << 30));
  bench_gemm();
  bench_attention();
  bench_memory();
  std::printf("\n");
  for (const Line& l : g_summary)
    std::printf("%s: %.1f %s (%.2fx vs %s)\n", l.name.c_str(), l.value, l.unit.c_str(), l.value / l.peer,
                l.unit == "GB/s" ? "D2D copy" : l.name.rfind("attention", 0) == 0 ? "cuBLASLt's best square GEMM"
                                                                                   : "cuBLASLt best");
  return 0;
}

#endif
