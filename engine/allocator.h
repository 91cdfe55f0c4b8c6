// allocator.h: device memory and the storage that tensors share.
//
// The CPU allocator caches freed blocks by rounded size so that the steady state of a training step
// allocates nothing from the system; blocks are 64-byte aligned (one cache line, one AVX-512 vector).
#pragma once
#include <cstddef>
#include <memory>

#include "engine/dtype.h"

namespace eng {

struct AllocatorStats {
  size_t in_use_bytes = 0;     // handed out and not yet returned
  size_t peak_bytes = 0;       // highest in_use_bytes since the last reset_peak()
  size_t cached_bytes = 0;     // held in the cache, ready for reuse
  size_t system_allocs = 0;    // calls that went to the system (cache misses)
  size_t requests = 0;         // all allocation requests
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* p, size_t nbytes) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void empty_cache() = 0;  // return every cached block to the system
};

// The allocator for a device; the CUDA one exists only in a CUDA build.
Allocator& allocator_for(Device d);

// A block of memory on one device; tensors share it through shared_ptr.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

}  // namespace eng
