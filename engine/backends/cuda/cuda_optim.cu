// cuda_optim.cu: the fused AdamW update on the GPU, one tensor (adamw_update) or many per launch
// (adamw_update_multi, with clipping by a norm that stays on the device), and the global gradient norm
// (global_norm; its per-tensor sums: sum_squares). One thread per element runs adamw_element (engine/optim_math.h), the function the CPU loop
// runs, with the scalars computed once on the host by the same adamw_scalars. Compiled with -fmad=false (see the Makefile) so no multiply-add is fused; with IEEE
// sqrt and division (nvcc's defaults) f64 updates are bitwise the CPU's, and so are the f32 moments. The f32
// parameter can differ in its last bit: on the host, ::sqrt(float) resolves to the C library's double sqrt, so the
// CPU evaluates the denominator in double, while the device uses the f32 sqrt (tests/gpu checks both facts).
#include <climits>
#include <vector>

#include "engine/backends/cuda/cuda_common.cuh"
#include "engine/optim_math.h"

namespace eng {
namespace cuda {
namespace {

template <typename T>
__global__ void adamw_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, int64_t n,
                             AdamWScalars<T> s) {
  ENG_GRID_STRIDE(i, n) {
    T pi = p[i], mi = m[i], vi = v[i];
    adamw_element<T>(pi, g[i], mi, vi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// ---- multi-tensor AdamW: up to kAdamWPerLaunch tensors per launch, described in the kernel's parameters (under
// the 4 KiB limit for f64), so no table is copied to the device. blockIdx.y picks the tensor, the x blocks stride
// over its elements.
constexpr int kAdamWPerLaunch = 32;
constexpr unsigned kAdamWMaxBlocksX = 256;

template <typename T> struct AdamWTable {
  T* p[kAdamWPerLaunch];
  const T* g[kAdamWPerLaunch];
  T* m[kAdamWPerLaunch];
  T* v[kAdamWPerLaunch];
  int64_t n[kAdamWPerLaunch];
  AdamWScalars<T> s[kAdamWPerLaunch];
};

// The clipping rule of clip_grad_norm, evaluated by every thread from the norm in device memory: the same double
// division as the host's, so the same coefficient, rounded to T as scale_grads rounds it.
template <typename T>
__global__ void adamw_multi_kernel(AdamWTable<T> t, const double* __restrict__ grad_norm, double max_norm) {
  bool scaled = false;
  T scale = T(1);
  if (grad_norm) {
    const double norm = *grad_norm;
    if (!isfinite(norm)) return;  // leave everything; the host reports the norm when it reads it
    const double coef = max_norm / (norm + 1e-6);
    scaled = max_norm > 0 && coef < 1.0;
    scale = T(coef);
  }
  const int k = blockIdx.y;
  T* __restrict__ p = t.p[k];
  const T* __restrict__ g = t.g[k];
  T* __restrict__ m = t.m[k];
  T* __restrict__ v = t.v[k];
  const AdamWScalars<T> s = t.s[k];
  ENG_GRID_STRIDE(i, t.n[k]) {
    T pi = p[i], mi = m[i], vi = v[i];
    adamw_element<T>(pi, scaled ? g[i] * scale : g[i], mi, vi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename T> void adamw_multi(const std::vector<AdamWTensor>& list, const AdamWClip& clip) {
  for (size_t first = 0; first < list.size(); first += kAdamWPerLaunch) {
    const size_t count = std::min(list.size() - first, size_t(kAdamWPerLaunch));
    AdamWTable<T> t{};
    int64_t max_n = 0;
    for (size_t j = 0; j < count; j++) {
      const AdamWTensor& a = list[first + j];
      ENG_CHECK(a.n >= 0, "adamw_update_multi: negative element count {}", a.n);
      ENG_CHECK(a.args.step >= 1, "adamw_update_multi: step must be >= 1 (1-based, for bias correction), got {}",
                a.args.step);
      t.p[j] = static_cast<T*>(a.param);
      t.g[j] = static_cast<const T*>(a.grad);
      t.m[j] = static_cast<T*>(a.m);
      t.v[j] = static_cast<T*>(a.v);
      t.n[j] = a.n;
      t.s[j] = adamw_scalars<T>(a.args);
      max_n = std::max(max_n, a.n);
    }
    if (max_n == 0) continue;
    const dim3 grid(std::min(blocks_for(max_n), kAdamWMaxBlocksX), unsigned(count));
    adamw_multi_kernel<T><<<grid, kThreads>>>(t, clip.grad_norm, clip.max_norm);
    CUDA_CHECK_LAUNCH("adamw_update_multi");
  }
}

// ---- global norm: every tensor is cut into chunks of kNormChunk elements; pass 1 sums each chunk's squares in f64
// (one block per chunk, a fixed tree), pass 2 adds each tensor's chunk sums (one block per tensor), pass 3 adds the
// tensors' sums in list order and takes the square root. Every order is fixed by the sizes alone.
constexpr int kNormPerLaunch = 64;
constexpr int64_t kNormChunk = 8192;

struct NormTable {
  const void* data[kNormPerLaunch];
  int64_t n[kNormPerLaunch];
  int64_t first_chunk[kNormPerLaunch];  // where this tensor's chunk sums go in the partials
  int64_t first_tensor;                 // index of data[0] in the whole list
};

template <typename T> __global__ void norm_chunks_kernel(NormTable t, double* __restrict__ partial) {
  __shared__ double smem[kThreads / 32];
  const int k = blockIdx.y;
  const int64_t lo = int64_t(blockIdx.x) * kNormChunk;
  if (lo >= t.n[k]) return;  // the whole block leaves together
  const int64_t hi = lo + kNormChunk < t.n[k] ? lo + kNormChunk : t.n[k];
  const T* __restrict__ x = static_cast<const T*>(t.data[k]);
  double acc = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) acc += double(x[i]) * double(x[i]);
  acc = block_allreduce<kThreads>(acc, SumOp{}, smem);
  if (threadIdx.x == 0) partial[t.first_chunk[k] + blockIdx.x] = acc;
}

__global__ void norm_tensors_kernel(NormTable t, const double* __restrict__ partial, double* __restrict__ per_tensor) {
  __shared__ double smem[kThreads / 32];
  const int k = blockIdx.x;
  const int64_t chunks = (t.n[k] + kNormChunk - 1) / kNormChunk;
  double acc = 0;
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) acc += partial[t.first_chunk[k] + c];
  acc = block_allreduce<kThreads>(acc, SumOp{}, smem);
  if (threadIdx.x == 0) per_tensor[t.first_tensor + k] = acc;
}

__global__ void norm_total_kernel(const double* __restrict__ per_tensor, int64_t count, double* __restrict__ norm) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double total = 0;
  for (int64_t k = 0; k < count; k++) total += per_tensor[k];
  *norm = sqrt(total);
}

// Passes 1 and 2 write each tensor's sum to `sums` when given (sum_squares), else to a temporary; pass 3 runs when
// `norm` is given (global_norm).
template <typename T>
void norm_of(int device, const std::vector<SumSquaresTensor>& list, double* norm, double* sums) {
  int64_t chunks = 0;
  for (const SumSquaresTensor& s : list) {
    ENG_CHECK(s.n >= 0, "global_norm: negative element count {}", s.n);
    chunks += (s.n + kNormChunk - 1) / kNormChunk;
  }
  DeviceBuffer partial(device, size_t(std::max<int64_t>(chunks, 1)) * sizeof(double));
  DeviceBuffer per_tensor_buffer(device, sums ? 0 : std::max<size_t>(list.size(), 1) * sizeof(double));
  double* per_tensor = sums ? sums : per_tensor_buffer.as<double>();
  int64_t next_chunk = 0;
  for (size_t first = 0; first < list.size(); first += kNormPerLaunch) {
    const size_t count = std::min(list.size() - first, size_t(kNormPerLaunch));
    NormTable t{};
    t.first_tensor = int64_t(first);
    int64_t max_chunks = 1;
    for (size_t j = 0; j < count; j++) {
      t.data[j] = list[first + j].data;
      t.n[j] = list[first + j].n;
      t.first_chunk[j] = next_chunk;
      const int64_t c = (t.n[j] + kNormChunk - 1) / kNormChunk;
      next_chunk += c;
      max_chunks = std::max(max_chunks, c);
    }
    ENG_CHECK(max_chunks <= INT32_MAX, "global_norm: a tensor of {} chunks is too large", max_chunks);
    norm_chunks_kernel<T><<<dim3(unsigned(max_chunks), unsigned(count)), kThreads>>>(t, partial.as<double>());
    CUDA_CHECK_LAUNCH("global_norm (chunks)");
    norm_tensors_kernel<<<unsigned(count), kThreads>>>(t, partial.as<double>(), per_tensor);
    CUDA_CHECK_LAUNCH("global_norm (tensors)");
  }
  if (!norm) return;
  norm_total_kernel<<<1, 32>>>(per_tensor, int64_t(list.size()), norm);
  CUDA_CHECK_LAUNCH("global_norm (total)");
}

}  // namespace

void CudaBackend::adamw_update_multi(DType dt, const std::vector<AdamWTensor>& tensors, const AdamWClip& clip) {
  OpScope scope(*this, "cuda.adamw_update_multi");
  switch (dt) {
    case DType::F32: adamw_multi<float>(tensors, clip); break;
    case DType::F64: adamw_multi<double>(tensors, clip); break;
    default: ENG_FAIL("adamw_update_multi: dtype {} not supported on cuda (f32, f64)", dtype_name(dt));
  }
}

namespace {

void norm_for_dtype(int device, DType dt, const char* op, const std::vector<SumSquaresTensor>& tensors, double* norm,
                    double* sums) {
  switch (dt) {
    case DType::F32: norm_of<float>(device, tensors, norm, sums); break;
    case DType::F64: norm_of<double>(device, tensors, norm, sums); break;
    default: ENG_FAIL("{}: dtype {} not supported on cuda (f32, f64)", op, dtype_name(dt));
  }
}

}  // namespace

void CudaBackend::global_norm(DType dt, const std::vector<SumSquaresTensor>& tensors, double* norm) {
  OpScope scope(*this, "cuda.global_norm");
  norm_for_dtype(device(), dt, "global_norm", tensors, norm, nullptr);
}

void CudaBackend::sum_squares(DType dt, const std::vector<SumSquaresTensor>& tensors, double* sums) {
  OpScope scope(*this, "cuda.sum_squares");
  norm_for_dtype(device(), dt, "sum_squares", tensors, nullptr, sums);
}

void CudaBackend::adamw_update(DType dt, void* param, const void* grad, void* m, void* v, int64_t n, const AdamWArgs& a) {
  OpScope scope(*this, "cuda.adamw_update");
  ENG_CHECK(n >= 0, "adamw_update: negative element count {}", n);
  ENG_CHECK(a.step >= 1, "adamw_update: step must be >= 1 (1-based, for bias correction), got {}", a.step);
  if (n == 0) return;
  switch (dt) {
    case DType::F32:
      adamw_kernel<float><<<blocks_for(n), kThreads>>>(static_cast<float*>(param), static_cast<const float*>(grad),
                                                       static_cast<float*>(m), static_cast<float*>(v), n,
                                                       adamw_scalars<float>(a));
      break;
    case DType::F64:
      adamw_kernel<double><<<blocks_for(n), kThreads>>>(static_cast<double*>(param), static_cast<const double*>(grad),
                                                        static_cast<double*>(m), static_cast<double*>(v), n,
                                                        adamw_scalars<double>(a));
      break;
    default: ENG_FAIL("adamw_update: dtype {} not supported on cuda (f32, f64)", dtype_name(dt));
  }
  CUDA_CHECK_LAUNCH("adamw_update");
}

}  // namespace cuda
}  // namespace eng
