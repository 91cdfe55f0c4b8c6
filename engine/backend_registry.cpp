// backend_registry.cpp: which backend serves a device (backend_for), whether a GPU is there (cuda_available) and
// copies of bytes between devices; the only engine file outside backends/ that knows the backends' classes.
#include <cstring>

#include "engine/backend.h"
#include "engine/backends/cpu/cpu_backend.h"
#include "engine/error.h"

namespace eng {

#ifndef ENGINE_WITH_CUDA
bool cuda_available() { return false; }
#endif

#ifdef ENGINE_WITH_CUDA
Backend& cuda_backend(int device);  // engine/backends/cuda
void cuda_copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);
#endif

Backend& backend_for(Device d) {
  if (d.is_cpu()) {
    static CpuBackend cpu;
    return cpu;
  }
#ifdef ENGINE_WITH_CUDA
  return cuda_backend(d.index);
#else
  ENG_FAIL("device {} requested, but this build has no CUDA backend", d.str());
#endif
}

void copy_bytes_between_devices(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, nbytes);
    return;
  }
#ifdef ENGINE_WITH_CUDA
  cuda_copy_bytes(dst, dst_dev, src, src_dev, nbytes);
#else
  ENG_FAIL("copy between {} and {} needs the CUDA backend, which this build lacks", src_dev.str(), dst_dev.str());
#endif
}

}  // namespace eng
