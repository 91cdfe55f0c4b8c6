// test_allocator.cpp: the caching allocator every device uses (engine/caching_allocator.h), over a fake raw memory
// that counts its calls and can refuse: rounding into shared block sizes, reuse without a system call, the stats,
// reset_peak, empty_cache, and the retry after giving the cache back when the system refuses.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>

#include "engine/caching_allocator.h"
#include "engine/error.h"

namespace {

// Heap blocks; rounds to 100 bytes; refuses any allocation while `budget` (bytes live in the system) would pass.
struct FakeMemory {
  size_t* live;      // bytes held from the system now
  size_t* releases;  // release() calls
  size_t budget;
  size_t round(size_t n) const { return (std::max<size_t>(n, 1) + 99) / 100 * 100; }
  void* try_allocate(size_t n) {
    if (*live + n > budget) return nullptr;
    *live += n;
    return std::malloc(n);
  }
  void release(void* p) {
    (*releases)++;
    *live -= 100 * (*static_cast<size_t*>(p));  // each test block records its size in hundreds
    std::free(p);
  }
  [[noreturn]] void out_of_memory(size_t n, const eng::AllocatorStats& st) {
    ENG_FAIL("fake memory: cannot allocate {} bytes ({} in use)", n, st.in_use_bytes);
  }
};

// Allocates and stamps the block with its rounded size in hundreds, for FakeMemory::release.
void* take(eng::Allocator& a, size_t n) {
  void* p = a.allocate(n);
  *static_cast<size_t*>(p) = (std::max<size_t>(n, 1) + 99) / 100;
  return p;
}

}  // namespace

TEST_SUITE("allocator") {

TEST_CASE("caching allocator: shared block sizes, reuse, stats, reset_peak, empty_cache") {
  size_t live = 0, releases = 0;
  eng::CachingAllocator<FakeMemory> a(FakeMemory{&live, &releases, 1 << 20});
  void* p = take(a, 150);  // a 200-byte block
  CHECK(a.stats().system_allocs == 1);
  CHECK(a.stats().in_use_bytes == 200);
  a.deallocate(p, 150);
  CHECK(a.stats().in_use_bytes == 0);
  CHECK(a.stats().cached_bytes == 200);
  void* q = take(a, 190);  // same rounded size: the cached block again, no system call
  CHECK(q == p);
  CHECK(a.stats().system_allocs == 1);
  CHECK(a.stats().cached_bytes == 0);
  void* r = take(a, 250);  // another size: a new block
  CHECK(r != q);
  CHECK(a.stats().system_allocs == 2);
  CHECK(a.stats().in_use_bytes == 500);
  CHECK(a.stats().peak_bytes == 500);
  CHECK(a.stats().requests == 3);
  a.deallocate(r, 250);
  CHECK(a.stats().peak_bytes == 500);
  a.reset_peak();
  CHECK(a.stats().peak_bytes == 200);
  a.deallocate(q, 190);
  a.deallocate(nullptr, 10);  // ignored
  CHECK(live == 500);
  a.empty_cache();
  CHECK(live == 0);
  CHECK(releases == 2);
  CHECK(a.stats().cached_bytes == 0);
  CHECK(a.stats().in_use_bytes == 0);
}

TEST_CASE("caching allocator: a refused allocation gives the cache back and retries once, then fails clearly") {
  size_t live = 0, releases = 0;
  eng::CachingAllocator<FakeMemory> a(FakeMemory{&live, &releases, 1000});
  void* p = take(a, 600);
  a.deallocate(p, 600);  // 600 bytes cached, still held from the system
  void* q = take(a, 700);  // 600 + 700 > 1000: refused, the cache released, then granted
  CHECK(releases == 1);
  CHECK(live == 700);
  CHECK(a.stats().cached_bytes == 0);
  CHECK(a.stats().system_allocs == 2);
  CHECK_THROWS_WITH_AS(take(a, 400), "fake memory: cannot allocate 400 bytes (700 in use)", eng::Error);
  CHECK(a.stats().in_use_bytes == 700);  // the failed request changed nothing
  a.deallocate(q, 700);
  a.empty_cache();
  CHECK(live == 0);
}

}  // TEST_SUITE
