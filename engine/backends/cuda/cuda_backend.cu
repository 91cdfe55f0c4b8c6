// cuda_backend.cu: the CUDA backend's plumbing: the device memory under the caching allocator, one backend per GPU,
// host<->device copies, cuda_available() and the backend's optional capabilities; and the streams, events, pinned
// host buffers and asynchronous copies of cuda_stream.h. The kernels live by family in the other cuda_*.cu files
// (see cuda_common.cuh for the list).
//
// Built by the Makefile with nvcc when the CUDA toolkit is found; runs only where a GPU is present.
#include <cuda_profiler_api.h>

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/backends/cuda/cuda_common.cuh"
#include "engine/backends/cuda/cuda_stream.h"
#include "engine/caching_allocator.h"

namespace eng {
namespace cuda {
namespace {

// ---------------------------------------------------------------- allocator

// cudaMalloc/cudaFree on one device, for the caching allocator (engine/caching_allocator.h).
struct CudaMemory {
  int device;
  cudaError_t last_error = cudaSuccess;  // of the last failed cudaMalloc, for the out-of-memory message
  size_t round(size_t nbytes) const { return (std::max<size_t>(nbytes, 1) + 511) & ~size_t(511); }
  void* try_allocate(size_t n) {
    CUDA_CHECK(cudaSetDevice(device));
    void* p = nullptr;
    last_error = cudaMalloc(&p, n);
    if (last_error == cudaSuccess) return p;
    (void)cudaGetLastError();  // clear the sticky-free allocation error before retrying
    return nullptr;
  }
  void release(void* p) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaFree(p));
  }
  [[noreturn]] void out_of_memory(size_t n, const AllocatorStats& st) {
    ENG_FAIL("CUDA out of memory on cuda:{}: cannot allocate {} bytes ({} bytes in use, peak {}); hint: {}", device, n,
             st.in_use_bytes, st.peak_bytes, cuda_hint(last_error));
  }
};
using CachingCudaAllocator = CachingAllocator<CudaMemory>;

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
  return e == GemmEpilogue::None || e == GemmEpilogue::Bias || e == GemmEpilogue::BiasGelu || e == GemmEpilogue::GeluGrad;
}

// ---------------------------------------------------------------- streams, events, pinned memory (cuda_stream.h)

// Destructors do not throw: they ignore errors, which the next checked call on the device reports anyway.

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

Stream::Stream(int device) : device_(device) {
  device_count_checked(device);
  CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  // Non-blocking: no implicit ordering with the legacy default stream the ops run on, so copies overlap compute.
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
}

Stream::~Stream() {
  if (!stream_) return;
  (void)cudaSetDevice(device_);
  // Its copies may still read pinned memory or write device memory that the owner frees next.
  (void)cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  (void)cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void Stream::synchronize() const {
  ENG_NVTX_RANGE("cuda.stream_synchronize");
  CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)));
}

void Stream::wait(const Event& e) const {
  CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_), static_cast<cudaEvent_t>(e.handle()), 0));
}

Event::Event(int device) : device_(device) {
  device_count_checked(device);
  CUDA_CHECK(cudaSetDevice(device));
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  event_ = e;
}

Event::~Event() {
  if (event_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void Event::record(const Stream& s) {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(s.handle())));
}

void Event::record_compute() {
  CUDA_CHECK(cudaSetDevice(device_));
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), 0));  // the legacy default stream: the ops' stream
}

void Event::synchronize() const {
  ENG_NVTX_RANGE("cuda.event_synchronize");
  CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

bool Event::done() const {
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (e == cudaErrorNotReady) return false;
  CUDA_CHECK(e);
  return true;
}

void compute_wait(const Event& e) {
  CUDA_CHECK(cudaSetDevice(e.device()));
  CUDA_CHECK(cudaStreamWaitEvent(0, static_cast<cudaEvent_t>(e.handle()), 0));
}

PinnedBuffer::~PinnedBuffer() {
  if (data_) (void)cudaFreeHost(data_);
}

void PinnedBuffer::reserve(size_t nbytes) {
  if (nbytes <= capacity_) return;
  if (data_) CUDA_CHECK(cudaFreeHost(data_));
  data_ = nullptr;
  capacity_ = 0;
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, nbytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    ENG_FAIL("cannot allocate {} bytes of pinned host memory (cudaHostAlloc: {}); hint: {}", nbytes,
             cudaGetErrorString(e), cuda_hint(e));
  }
  data_ = p;
  capacity_ = nbytes;
  allocations_++;
}

void copy_to_device_async(void* dst_device, const void* src_pinned, size_t nbytes, const Stream& s) {
  if (nbytes == 0) return;
  ENG_NVTX_RANGE("cuda.copy_to_device_async");
  CUDA_CHECK(cudaSetDevice(s.device()));
  CUDA_CHECK(cudaMemcpyAsync(dst_device, src_pinned, nbytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(s.handle())));
}

void profiler_start() { CUDA_CHECK(cudaProfilerStart()); }
void profiler_stop() { CUDA_CHECK(cudaProfilerStop()); }

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
    a = new cuda::CachingCudaAllocator(cuda::CudaMemory{device});
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

namespace cuda {

IndexFault* CudaBackend::index_fault() {
  std::call_once(fault_once_, [&] {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(IndexFault)));
    CUDA_CHECK(cudaMemset(p, 0, sizeof(IndexFault)));
    fault_.store(static_cast<IndexFault*>(p));
  });
  return fault_.load();
}

void CudaBackend::raise_index_fault() {
  IndexFault* dev = fault_.load();
  if (!dev) return;  // no indexing kernel has run on this device
  IndexFault f{};
  CUDA_CHECK(cudaMemcpy(&f, dev, sizeof(f), cudaMemcpyDeviceToHost));
  if (!f.flag) return;
  CUDA_CHECK(cudaMemset(dev, 0, sizeof(IndexFault)));
  if (f.op == kFaultOneHot || f.op == kFaultBincount)  // the CPU's wording (cpu_routing.cpp)
    ENG_FAIL("{}: index {} out of range for {} {} (found on cuda:{} by a kernel queued before this read-back; that "
             "element was skipped)",
             f.op == kFaultOneHot ? "one_hot" : "bincount", f.value, f.size, f.op == kFaultOneHot ? "classes" : "bins",
             device_);
  const char* op = f.op == kFaultIndexSelect ? "index_select"
                   : f.op == kFaultIndexAdd  ? "index_add"
                   : f.op == kFaultGather    ? "gather"
                                             : "scatter_add";
  ENG_FAIL("{}: index {} out of range for dim {} of size {} (found on cuda:{} by a kernel queued before this read-back; "
           "that element was skipped)",
           op, f.value, f.dim, f.size, device_);
}

}  // namespace cuda

void cuda_copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  // With unified addressing the runtime knows where each pointer lives; cudaMemcpyDefault also covers copies
  // between two GPUs. cudaMemcpy is ordered after all work already queued on the default stream.
  ENG_NVTX_RANGE("cuda.copy_bytes");
  CUDA_CHECK(cudaSetDevice(dst_dev.is_cuda() ? dst_dev.index : src_dev.index));
  CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
  // A read-back has waited for every kernel queued before it: report an index fault one of them met.
  if (dst_dev.is_cpu() && src_dev.is_cuda()) static_cast<cuda::CudaBackend&>(cuda_backend(src_dev.index)).raise_index_fault();
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
