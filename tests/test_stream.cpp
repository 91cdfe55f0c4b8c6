// test_stream.cpp: engine/stream.h on the CPU (the stand-ins every CPU run goes through: a pinned buffer that is
// plain memory, reused and grown only when too small, a copy that is a memcpy, events that are always done), and
// what it says of the build and of the GPUs, against what the build and engine/backend.h say.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/stream.h"

TEST_SUITE("stream") {
  TEST_CASE("on the CPU a pinned buffer is plain memory, reused until too small, and the copy is a memcpy") {
    const eng::Device cpu = eng::Device::cpu();
    eng::PinnedBuffer host(cpu);
    CHECK(host.capacity() == 0);
    CHECK(host.allocations() == 0);
    host.reserve(100);
    CHECK(host.capacity() == 100);
    CHECK(host.allocations() == 1);
    host.reserve(60);  // smaller: the same memory
    CHECK(host.capacity() == 100);
    CHECK(host.allocations() == 1);
    host.reserve(300);
    CHECK(host.capacity() == 300);
    CHECK(host.allocations() == 2);

    std::vector<unsigned char> src(300), dst(300, 0);
    for (size_t i = 0; i < src.size(); i++) src[i] = static_cast<unsigned char>(i * 7 + 1);
    std::memcpy(host.data(), src.data(), src.size());
    eng::Stream copy(cpu);
    eng::Event copied(cpu);
    CHECK(copied.done());  // nothing recorded yet
    eng::copy_to_device_async(dst.data(), host.data(), src.size(), copy);
    copied.record(copy);
    eng::compute_wait(copied);
    copied.synchronize();
    copy.synchronize();
    CHECK(copied.done());
    CHECK(dst == src);
    eng::profiler_start(cpu);  // no profiler on the CPU: nothing happens
    eng::profiler_stop(cpu);
  }

  TEST_CASE("the build and the GPU count agree with the backend") {
#ifdef ENGINE_WITH_CUDA
    CHECK(eng::built_with_cuda());
#else
    CHECK(!eng::built_with_cuda());
#endif
    CHECK(eng::gpu_count() >= 0);
    CHECK((eng::gpu_count() > 0) == eng::cuda_available());
    if (!eng::built_with_cuda()) {
      // A CUDA device in a build without the backend: one line naming the device and what is missing.
      try {
        eng::Stream s(eng::Device::cuda(0));
        FAIL("a stream on cuda:0 was made in a build without the CUDA backend");
      } catch (const eng::Error& e) {
        const std::string what = e.what();
        CHECK_MESSAGE(what.find("a stream on device cuda:0 needs the CUDA backend, which this build lacks") !=
                          std::string::npos, what);
        CHECK(what.find('\n') == std::string::npos);
      }
    }
  }
}
