// allocator.cpp: the CPU allocator (the caching allocator of caching_allocator.h over the heap) and Storage.
#include "engine/allocator.h"

#include <cstdlib>

#include "engine/caching_allocator.h"
#include "engine/error.h"

namespace eng {
namespace {

// The system heap, 64-byte aligned blocks.
struct CpuMemory {
  // Sizes are rounded up (to 64 bytes below 1 MiB, to 1/8 of the next power of two above) so that
  // tensors of nearly the same size share blocks, with at most 12.5% waste.
  size_t round(size_t n) const {
    if (n == 0) n = 1;
    if (n < (1u << 20)) return (n + 63) & ~size_t(63);
    size_t p = 1;
    while (p < n) p <<= 1;
    size_t step = p >> 3;
    return (n + step - 1) / step * step;
  }
  void* try_allocate(size_t n) { return std::aligned_alloc(64, n); }
  void release(void* p) { std::free(p); }
  [[noreturn]] void out_of_memory(size_t n, const AllocatorStats&) {
    ENG_FAIL("out of CPU memory allocating {} bytes", n);
  }
};

}  // namespace

#ifdef ENGINE_WITH_CUDA
Allocator& cuda_allocator(int device);  // engine/backends/cuda
#endif

Allocator& allocator_for(Device d) {
  if (d.is_cpu()) {
    static auto* cpu = new CachingAllocator<CpuMemory>(CpuMemory{});  // never destroyed: tensors may outlive main
    return *cpu;
  }
#ifdef ENGINE_WITH_CUDA
  return cuda_allocator(d.index);
#else
  ENG_FAIL("device {} requested, but this build has no CUDA backend (rebuild with nvcc and cuBLAS present)", d.str());
#endif
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = allocator_for(device).allocate(nbytes);
}
Storage::~Storage() { allocator_for(device_).deallocate(data_, nbytes_); }

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return cuda(std::stoi(s.substr(5)));
    } catch (...) {
    }
  }
  ENG_FAIL("unknown device '{}': expected cpu, cuda or cuda:N", s);
}

}  // namespace eng
