// allocator.cpp: the caching CPU allocator.
#include "engine/allocator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "engine/error.h"

namespace eng {
namespace {

// Sizes are rounded up (to 64 bytes below 1 MiB, to 1/8 of the next power of two above) so that
// tensors of nearly the same size share blocks, with at most 12.5% waste.
size_t round_size(size_t n) {
  if (n == 0) n = 1;
  if (n < (1u << 20)) return (n + 63) & ~size_t(63);
  size_t p = 1;
  while (p < n) p <<= 1;
  size_t step = p >> 3;
  return (n + step - 1) / step * step;
}

class CachingCpuAllocator final : public Allocator {
 public:
  ~CachingCpuAllocator() override { empty_cache(); }

  void* allocate(size_t nbytes) override {
    size_t n = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    st_.requests++;
    void* p = nullptr;
    auto it = free_.find(n);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      st_.cached_bytes -= n;
    } else {
      p = std::aligned_alloc(64, n);
      if (!p) {  // give the cache back and try once more before failing
        release_all_locked();
        p = std::aligned_alloc(64, n);
      }
      ENG_CHECK(p != nullptr, "out of CPU memory allocating {} bytes", n);
      st_.system_allocs++;
    }
    st_.in_use_bytes += n;
    if (st_.in_use_bytes > st_.peak_bytes) st_.peak_bytes = st_.in_use_bytes;
    return p;
  }

  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    size_t n = round_size(nbytes);
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
    release_all_locked();
  }

 private:
  void release_all_locked() {
    for (auto& kv : free_)
      for (void* p : kv.second) std::free(p);
    free_.clear();
    st_.cached_bytes = 0;
  }
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats st_;
};

}  // namespace

#ifdef ENGINE_WITH_CUDA
Allocator& cuda_allocator(int device);  // engine/backends/cuda
#endif

Allocator& allocator_for(Device d) {
  if (d.is_cpu()) {
    static CachingCpuAllocator* cpu = new CachingCpuAllocator();  // never destroyed: tensors may outlive main
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
