// cuda_backend.cu: the CUDA backend: caching device allocator, host<->device copies, and the
// elementwise kernels (copy, fill, unary, binary, where) over any strides, using the same per-element
// math as the CPU (engine/elementwise_math.h). GEMM goes to cuBLAS. Ops not yet written here fall back
// to Backend's clear "not implemented on the cuda backend" error.
//
// Built by the Makefile with nvcc when the CUDA toolkit is found; runs only where a GPU is present.
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/allocator.h"
#include "engine/backend.h"
#include "engine/backends/cuda/cuda_check.h"
#include "engine/elementwise_math.h"

namespace eng {
namespace {

// ---------------------------------------------------------------- allocator

class CachingCudaAllocator final : public Allocator {
 public:
  explicit CachingCudaAllocator(int device) : device_(device) {}
  void* allocate(size_t nbytes) override {
    size_t n = (std::max<size_t>(nbytes, 1) + 511) & ~size_t(511);
    std::lock_guard<std::mutex> lock(mu_);
    st_.requests++;
    void* p = nullptr;
    auto it = free_.find(n);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      st_.cached_bytes -= n;
    } else {
      CUDA_CHECK(cudaSetDevice(device_));
      if (cudaMalloc(&p, n) != cudaSuccess) {
        cudaGetLastError();
        release_locked();
        CUDA_CHECK(cudaMalloc(&p, n));
      }
      st_.system_allocs++;
    }
    st_.in_use_bytes += n;
    st_.peak_bytes = std::max(st_.peak_bytes, st_.in_use_bytes);
    return p;
  }
  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    size_t n = (std::max<size_t>(nbytes, 1) + 511) & ~size_t(511);
    std::lock_guard<std::mutex> lock(mu_);
    free_[n].push_back(p);
    st_.in_use_bytes -= n;
    st_.cached_bytes += n;
  }
  AllocatorStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return st_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mu_);
    st_.peak_bytes = st_.in_use_bytes;
  }
  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mu_);
    release_locked();
  }

 private:
  void release_locked() {
    for (auto& kv : free_)
      for (void* p : kv.second) cudaFree(p);
    free_.clear();
    st_.cached_bytes = 0;
  }
  int device_;
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats st_;
};

// ---------------------------------------------------------------- kernels

// Geometry passed by value to kernels.
struct Geo {
  int ndim;
  int64_t shape[kMaxDims];
  int64_t strides[4][kMaxDims];
};

Geo make_geo(const TensorDesc* ds[], int n) {
  Geo g{};
  g.ndim = ds[0]->ndim;
  for (int d = 0; d < g.ndim; d++) {
    g.shape[d] = ds[0]->shape[d];
    for (int k = 0; k < n; k++) g.strides[k][d] = ds[k]->strides[d];
  }
  return g;
}

template <int N> __device__ inline void offsets(const Geo& g, int64_t i, int64_t* off) {
  for (int k = 0; k < N; k++) off[k] = 0;
  for (int d = g.ndim - 1; d >= 0; d--) {
    int64_t idx = i % g.shape[d];
    i /= g.shape[d];
    for (int k = 0; k < N; k++) off[k] += idx * g.strides[k][d];
  }
}

template <typename T> __global__ void fill_kernel(T* d, Geo g, int64_t n, T v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[1];
    offsets<1>(g, i, off);
    d[off[0]] = v;
  }
}

template <typename D, typename S> __device__ inline D cvt(S s) { return static_cast<D>(s); }

template <typename D, typename S> __global__ void copy_kernel(D* d, const S* s, Geo g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    offsets<2>(g, i, off);
    d[off[0]] = cvt<D, S>(s[off[1]]);
  }
}

template <typename T> __global__ void unary_kernel(UnaryOp op, T* d, const T* s, Geo g, int64_t n, T a, T b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    offsets<2>(g, i, off);
    d[off[0]] = unary_math<T>(op, s[off[1]], a, b);
  }
}

template <typename T> __global__ void binary_kernel(BinaryOp op, T* d, const T* x, const T* y, Geo g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    offsets<3>(g, i, off);
    d[off[0]] = binary_math<T>(op, x[off[1]], y[off[2]]);
  }
}

template <typename T, typename C> __global__ void where_kernel(T* d, const C* c, const T* x, const T* y, Geo g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[4];
    offsets<4>(g, i, off);
    d[off[0]] = c[off[1]] != C(0) ? x[off[2]] : y[off[3]];
  }
}

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + 255) / 256, 65535)); }

// Calls f with a value of the C++ type for dt (bf16 is not yet handled by these kernels).
template <typename F> void dispatch_cuda(DType dt, const char* op, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
    default: ENG_FAIL("{} on cuda: dtype {} not supported yet", op, dtype_name(dt));
  }
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {}
  const char* name() const override { return "cuda"; }

  void copy(const TensorDesc& dst, const TensorDesc& src) override {
    const TensorDesc* ds[2] = {&dst, &src};
    Geo g = make_geo(ds, 2);
    int64_t n = dst.numel();
    dispatch_cuda(dst.dtype, "copy", [&](auto dt) {
      using D = decltype(dt);
      dispatch_cuda(src.dtype, "copy", [&](auto st) {
        using S = decltype(st);
        copy_kernel<D, S><<<grid_for(n), 256>>>(static_cast<D*>(dst.data), static_cast<const S*>(src.data), g, n);
      });
    });
    CUDA_CHECK_LAUNCH("copy");
  }
  void fill(const TensorDesc& dst, double value) override {
    const TensorDesc* ds[1] = {&dst};
    Geo g = make_geo(ds, 1);
    int64_t n = dst.numel();
    dispatch_cuda(dst.dtype, "fill", [&](auto t) {
      using T = decltype(t);
      fill_kernel<T><<<grid_for(n), 256>>>(static_cast<T*>(dst.data), g, n, T(value));
    });
    CUDA_CHECK_LAUNCH("fill");
  }
  void unary(UnaryOp op, const TensorDesc& dst, const TensorDesc& src, UnaryParams p) override {
    const TensorDesc* ds[2] = {&dst, &src};
    Geo g = make_geo(ds, 2);
    int64_t n = dst.numel();
    if (dst.dtype == DType::F32)
      unary_kernel<float><<<grid_for(n), 256>>>(op, (float*)dst.data, (const float*)src.data, g, n, float(p.a), float(p.b));
    else if (dst.dtype == DType::F64)
      unary_kernel<double><<<grid_for(n), 256>>>(op, (double*)dst.data, (const double*)src.data, g, n, p.a, p.b);
    else
      ENG_FAIL("unary op on cuda: dtype {} not supported", dtype_name(dst.dtype));
    CUDA_CHECK_LAUNCH("unary");
  }
  void binary(BinaryOp op, const TensorDesc& dst, const TensorDesc& a, const TensorDesc& b) override {
    const TensorDesc* ds[3] = {&dst, &a, &b};
    Geo g = make_geo(ds, 3);
    int64_t n = dst.numel();
    if (dst.dtype == DType::F32)
      binary_kernel<float><<<grid_for(n), 256>>>(op, (float*)dst.data, (const float*)a.data, (const float*)b.data, g, n);
    else if (dst.dtype == DType::F64)
      binary_kernel<double><<<grid_for(n), 256>>>(op, (double*)dst.data, (const double*)a.data, (const double*)b.data, g, n);
    else
      ENG_FAIL("binary op on cuda: dtype {} not supported yet", dtype_name(dst.dtype));
    CUDA_CHECK_LAUNCH("binary");
  }
  void where(const TensorDesc& dst, const TensorDesc& cond, const TensorDesc& a, const TensorDesc& b) override {
    const TensorDesc* ds[4] = {&dst, &cond, &a, &b};
    Geo g = make_geo(ds, 4);
    int64_t n = dst.numel();
    dispatch_cuda(dst.dtype, "where", [&](auto t) {
      using T = decltype(t);
      dispatch_cuda(cond.dtype, "where", [&](auto c) {
        using C = decltype(c);
        where_kernel<T, C><<<grid_for(n), 256>>>((T*)dst.data, (const C*)cond.data, (const T*)a.data, (const T*)b.data, g, n);
      });
    });
    CUDA_CHECK_LAUNCH("where");
  }
  void gemm(const GemmArgs& g) override {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    cublasHandle_t h = handle();
    cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (g.dtype == DType::F32) {
      float alpha = float(g.alpha), beta = float(g.beta);
      CUBLAS_CHECK(cublasSgemmStridedBatched(h, tb, ta, int(g.n), int(g.m), int(g.k), &alpha, (const float*)g.b,
                                             int(g.ldb), g.stride_b, (const float*)g.a, int(g.lda), g.stride_a, &beta,
                                             (float*)g.c, int(g.ldc), g.stride_c, int(g.batch)));
    } else if (g.dtype == DType::F64) {
      CUBLAS_CHECK(cublasDgemmStridedBatched(h, tb, ta, int(g.n), int(g.m), int(g.k), &g.alpha, (const double*)g.b,
                                             int(g.ldb), g.stride_b, (const double*)g.a, int(g.lda), g.stride_a, &g.beta,
                                             (double*)g.c, int(g.ldc), g.stride_c, int(g.batch)));
    } else {
      ENG_FAIL("gemm on cuda: dtype {} not supported yet", dtype_name(g.dtype));
    }
  }

 private:
  cublasHandle_t handle() {
    std::call_once(once_, [&] {
      CUDA_CHECK(cudaSetDevice(device_));
      CUBLAS_CHECK(cublasCreate(&handle_));
    });
    return handle_;
  }
  int device_;
  std::once_flag once_;
  cublasHandle_t handle_ = nullptr;
};

int device_count_checked(int device) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0)
    ENG_FAIL("device cuda:{} requested, but no CUDA GPU is available ({})", device,
             e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
  ENG_CHECK(device >= 0 && device < n, "device cuda:{} requested, but only {} GPU(s) are visible", device, n);
  return n;
}

}  // namespace

Allocator& cuda_allocator(int device) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<CachingCudaAllocator>> all;
  std::lock_guard<std::mutex> lock(mu);
  auto& a = all[device];
  if (!a) {
    device_count_checked(device);
    a.reset(new CachingCudaAllocator(device));
  }
  return *a;
}

Backend& cuda_backend(int device) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<CudaBackend>> all;
  std::lock_guard<std::mutex> lock(mu);
  auto& b = all[device];
  if (!b) {
    device_count_checked(device);
    b.reset(new CudaBackend(device));
  }
  return *b;
}

void cuda_copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  cudaMemcpyKind kind = dst_dev.is_cpu() ? cudaMemcpyDeviceToHost : (src_dev.is_cpu() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice);
  CUDA_CHECK(cudaMemcpy(dst, src, nbytes, kind));
}

bool cuda_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace eng
