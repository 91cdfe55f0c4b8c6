// test_cuda_host.cpp: parts of the CUDA backend that run without a GPU, so `make test` checks them on any machine
// whose build has the CUDA backend (the GPU suites, build/run_tests_gpu, skip there).
#include <doctest/doctest.h>

#include <string>

#ifdef ENGINE_WITH_CUDA
#include "engine/backends/cuda/attention_impl.h"
#endif

TEST_SUITE("cuda without a gpu") {
  // cuDNN's SDPA operations are built through the backend API by hand (no frontend library): cuDNN validates each
  // operation's attributes when it is finalized, which needs no GPU, so a wrong attribute type, a missing tensor or
  // a stride cuDNN rejects shows here. ViT-B/16's attention, contiguous and as views of the packed qkv projection.
  TEST_CASE("cuDNN's SDPA forward and backward operations finalize for ViT-B/16's attention, contiguous and packed") {
#ifndef ENGINE_WITH_CUDA
    MESSAGE("skipped: this build has no CUDA backend");
#else
    if (!eng::cuda::cudnn_attention_compiled()) {
      MESSAGE("skipped: this build has no cuDNN fused attention (cuDNN >= 9.13.1 was not found when building)");
      return;
    }
    CHECK(eng::cuda::cudnn_attention_operation_check(256, 12, 50, 64, false) == "");
    CHECK(eng::cuda::cudnn_attention_operation_check(256, 12, 50, 64, true) == "");
    CHECK(eng::cuda::cudnn_attention_operation_check(2, 16, 197, 32, true) == "");
    // And a shape cuDNN must refuse, so the check can fail: a negative dimension, named in one line.
    const std::string bad = eng::cuda::cudnn_attention_operation_check(2, -1, 50, 64, false);
    CHECK(bad.find("SDPA forward: finalize a tensor descriptor: CUDNN_STATUS_BAD_PARAM") == 0);
#endif
  }
}
