// caching_allocator.h: the caching allocator every device uses, written once over a device's raw memory calls.
//
// Freed blocks are kept by rounded size and handed out again, so the steady state of a training step allocates
// nothing from the system (for a GPU: no cudaMalloc/cudaFree, which synchronise the device). When the system
// refuses, the cache is given back and the allocation tried once more before it fails.
#pragma once
#include <cstddef>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "engine/allocator.h"

namespace eng {

// RawMemory supplies, for one device:
//   size_t round(size_t nbytes) const        the block size a request of nbytes gets (blocks of one size are shared)
//   void* try_allocate(size_t n)             n bytes from the system, or null when it has none
//   void release(void* p)                    gives a block back to the system
//   [[noreturn]] void out_of_memory(size_t n, const AllocatorStats& st)   throws the device's error
template <typename RawMemory> class CachingAllocator final : public Allocator {
 public:
  explicit CachingAllocator(RawMemory raw) : raw_(std::move(raw)) {}

  void* allocate(size_t nbytes) override {
    const size_t n = raw_.round(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    st_.requests++;
    void* p = nullptr;
    auto it = free_.find(n);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      st_.cached_bytes -= n;
    } else {
      p = raw_.try_allocate(n);
      if (!p) {
        release_all_locked();
        p = raw_.try_allocate(n);
        if (!p) raw_.out_of_memory(n, st_);
      }
      st_.system_allocs++;
    }
    st_.in_use_bytes += n;
    if (st_.in_use_bytes > st_.peak_bytes) st_.peak_bytes = st_.in_use_bytes;
    return p;
  }

  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    const size_t n = raw_.round(nbytes);
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
      for (void* p : kv.second) raw_.release(p);
    free_.clear();
    st_.cached_bytes = 0;
  }
  RawMemory raw_;
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats st_;
};

}  // namespace eng
