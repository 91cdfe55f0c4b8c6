// nvtx.h: RAII NVTX ranges, so Nsight Systems shows every engine op by name on its timeline.
//
//   { ENG_NVTX_RANGE("cuda.softmax_forward"); ... }   // the range ends with the scope
//
// In a CUDA build (ENGINE_WITH_CUDA) this uses the header-only NVTX v3 from the toolkit; costs a few
// nanoseconds per range when no profiler is attached. Elsewhere it compiles to nothing.
#pragma once

#if defined(ENGINE_WITH_CUDA) && defined(__has_include)
#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define ENG_HAVE_NVTX 1
#endif
#endif

namespace eng {

#ifdef ENG_HAVE_NVTX
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
#else
class NvtxRange {
 public:
  explicit NvtxRange(const char*) {}
};
#endif

}  // namespace eng

#define ENG_NVTX_CONCAT2(a, b) a##b
#define ENG_NVTX_CONCAT(a, b) ENG_NVTX_CONCAT2(a, b)
#define ENG_NVTX_RANGE(name) ::eng::NvtxRange ENG_NVTX_CONCAT(eng_nvtx_range_, __LINE__)(name)
