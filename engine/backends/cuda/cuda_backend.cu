// cuda_backend.cu: the CUDA backend's plumbing: the caching device allocator, one backend per GPU,
// host<->device copies, cuda_available() and the backend's optional capabilities. The kernels live by family
// in the other cuda_*.cu files (see cuda_common.cuh for the list).
//
// Built by the Makefile with nvcc when the CUDA toolkit is found; runs only where a GPU is present.
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {
namespace {

// ---------------------------------------------------------------- allocator

// Freed blocks are kept by rounded size and handed out again, so the steady state of a training step makes no
// cudaMalloc/cudaFree calls (both synchronise the device). On an allocation failure the cache is released
// and the allocation tried once more.
class CachingCudaAllocator final : public Allocator {
 public:
  explicit CachingCudaAllocator(int device) : device_(device) {}
  void* allocate(size_t nbytes) override {
    const size_t n = round(nbytes);
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
        (void)cudaGetLastError();  // clear the sticky-free allocation error before retrying
        release_locked();
        cudaError_t e = cudaMalloc(&p, n);
        if (e != cudaSuccess)
          ENG_FAIL("CUDA out of memory on cuda:{}: cannot allocate {} bytes ({} bytes in use, peak {}); hint: {}",
                   device_, n, st_.in_use_bytes, st_.peak_bytes, cuda_hint(e));
      }
      st_.system_allocs++;
    }
    st_.in_use_bytes += n;
    st_.peak_bytes = std::max(st_.peak_bytes, st_.in_use_bytes);
    return p;
  }
  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    const size_t n = round(nbytes);
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
  static size_t round(size_t nbytes) { return (std::max<size_t>(nbytes, 1) + 511) & ~size_t(511); }
  void release_locked() {
    CUDA_CHECK(cudaSetDevice(device_));
    for (auto& kv : free_)
      for (void* p : kv.second) CUDA_CHECK(cudaFree(p));
    free_.clear();
    st_.cached_bytes = 0;
  }
  int device_;
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats st_;
};

int device_count_checked(int device) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    ENG_FAIL("device cuda:{} requested, but no CUDA GPU is available ({}); hint: {}", device,
             e == cudaSuccess ? "0 devices" : cudaGetErrorString(e),
             cuda_hint(e == cudaSuccess ? cudaErrorNoDevice : e));
  }
  ENG_CHECK(device >= 0 && device < n, "device cuda:{} requested, but only {} GPU(s) are visible", device, n);
  return n;
}

}  // namespace

// ---------------------------------------------------------------- capabilities

bool CudaBackend::supports_gemm_epilogue(GemmEpilogue e) const {
  return e == GemmEpilogue::None || e == GemmEpilogue::Bias || e == GemmEpilogue::BiasGelu;
}

}  // namespace cuda

// ---------------------------------------------------------------- entry points used by engine/*.cpp

// Allocators and backends are created on first use and never destroyed: tensors held in static storage may
// be released after main returns, and must still find their allocator.
Allocator& cuda_allocator(int device) {
  static std::mutex mu;
  static auto* all = new std::map<int, cuda::CachingCudaAllocator*>();
  std::lock_guard<std::mutex> lock(mu);
  auto& a = (*all)[device];
  if (!a) {
    cuda::device_count_checked(device);
    a = new cuda::CachingCudaAllocator(device);
  }
  return *a;
}

Backend& cuda_backend(int device) {
  static std::mutex mu;
  static auto* all = new std::map<int, cuda::CudaBackend*>();
  std::lock_guard<std::mutex> lock(mu);
  auto& b = (*all)[device];
  if (!b) {
    cuda::device_count_checked(device);
    b = new cuda::CudaBackend(device);
  }
  return *b;
}

void cuda_copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  // With unified addressing the runtime knows where each pointer lives; cudaMemcpyDefault also covers copies
  // between two GPUs. cudaMemcpy is ordered after all work already queued on the default stream.
  ENG_NVTX_RANGE("cuda.copy_bytes");
  CUDA_CHECK(cudaSetDevice(dst_dev.is_cuda() ? dst_dev.index : src_dev.index));
  CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
}

bool cuda_available() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // "no device" must not stick to later calls
    return false;
  }
  return n > 0;
}

}  // namespace eng
