// backend.cpp: device -> backend dispatch and the default "not implemented on this device" errors.
#include "engine/backend.h"

#include <cstring>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/error.h"

namespace eng {

void Backend::not_implemented(const char* op) const {
  ENG_FAIL("op '{}' is not implemented on the {} backend yet", op, name());
}

void Backend::copy(const TensorDesc&, const TensorDesc&) { not_implemented("copy"); }
void Backend::fill(const TensorDesc&, double) { not_implemented("fill"); }
void Backend::unary(UnaryOp, const TensorDesc&, const TensorDesc&, UnaryParams) { not_implemented("unary"); }
void Backend::binary(BinaryOp, const TensorDesc&, const TensorDesc&, const TensorDesc&) { not_implemented("binary"); }
void Backend::where(const TensorDesc&, const TensorDesc&, const TensorDesc&, const TensorDesc&) { not_implemented("where"); }
void Backend::reduce(ReduceOp, const TensorDesc&, const TensorDesc&) { not_implemented("reduce"); }
void Backend::arg_reduce(bool, const TensorDesc&, const TensorDesc&, const TensorDesc&, int) { not_implemented("arg_reduce"); }
void Backend::gemm(const GemmArgs&) { not_implemented("gemm"); }
void Backend::softmax_forward(DType, void*, const void*, int64_t, int64_t, double, bool) { not_implemented("softmax"); }
void Backend::softmax_backward(DType, void*, const void*, const void*, int64_t, int64_t, double, bool) {
  not_implemented("softmax_backward");
}
void Backend::layer_norm_forward(DType, void*, void*, void*, const void*, const void*, const void*, int64_t, int64_t,
                                 double) {
  not_implemented("layer_norm");
}
void Backend::layer_norm_backward(DType, void*, void*, void*, const void*, const void*, const void*, const void*,
                                  const void*, int64_t, int64_t) {
  not_implemented("layer_norm_backward");
}
void Backend::index_select(const TensorDesc&, const TensorDesc&, int, const TensorDesc&) { not_implemented("index_select"); }
void Backend::index_add(const TensorDesc&, int, const TensorDesc&, const TensorDesc&) { not_implemented("index_add"); }
void Backend::gather(const TensorDesc&, const TensorDesc&, int, const TensorDesc&) { not_implemented("gather"); }
void Backend::scatter_add(const TensorDesc&, int, const TensorDesc&, const TensorDesc&) { not_implemented("scatter_add"); }
void Backend::sort(const TensorDesc&, const TensorDesc&, const TensorDesc&, int, bool) { not_implemented("sort"); }
void Backend::topk(const TensorDesc&, const TensorDesc&, const TensorDesc&, int64_t, int, bool) { not_implemented("topk"); }
void Backend::random_uniform(const TensorDesc&, uint64_t, uint64_t, uint64_t, double, double) {
  not_implemented("random_uniform");
}
void Backend::random_normal(const TensorDesc&, uint64_t, uint64_t, uint64_t, double, double) {
  not_implemented("random_normal");
}
void Backend::adamw_update(DType, void*, const void*, void*, void*, int64_t, const AdamWArgs&) {
  not_implemented("adamw_update");
}
void Backend::adamw_update_multi(DType, const std::vector<AdamWTensor>&, const AdamWClip&) {
  not_implemented("adamw_update_multi");
}
void Backend::global_norm(DType, const std::vector<SumSquaresTensor>&, double*) { not_implemented("global_norm"); }

// ---- routing for expert layers
void Backend::cumsum(const TensorDesc&, const TensorDesc&, int, bool) { not_implemented("cumsum"); }
void Backend::one_hot(const TensorDesc&, const TensorDesc&) { not_implemented("one_hot"); }
void Backend::bincount(const TensorDesc&, const TensorDesc&) { not_implemented("bincount"); }
void Backend::grouped_gemm(const std::vector<GemmArgs>&) { not_implemented("grouped_gemm"); }
// ---- end of routing

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
