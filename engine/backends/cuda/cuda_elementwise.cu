// cuda_elementwise.cu: copy (with dtype conversion), fill, unary, binary and where over any strides, plus the
// small kernels that finish a GEMM (epilogue, beta scaling). The per-element math is engine/elementwise_math.h,
// the same functions the CPU loops run; this file is compiled with -fmad=false (see the Makefile) so that
// a*b+c is not contracted into an fma, and results match the CPU bit for bit wherever no libm function is
// involved (add/sub/mul/div, comparisons, relu, ...); exp/log/erf/tanh may differ in the last ulp.
// bf16 tensors compute in f32 and round once on store.
#include <type_traits>

#include "engine/backends/cuda/cuda_common.cuh"
#include "engine/elementwise_math.h"

namespace eng {
namespace cuda {
namespace {

template <typename T> __global__ void fill_kernel(T* d, Geo g, int64_t n, T v) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[1];
    geo_offsets<1>(g, i, off);
    d[off[0]] = v;
  }
}

template <typename D, typename S> __global__ void copy_kernel(D* d, const S* s, Geo g, int64_t n) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[2];
    geo_offsets<2>(g, i, off);
    d[off[0]] = convert<D, S>(s[off[1]]);
  }
}

template <typename T> __global__ void unary_kernel(UnaryOp op, T* d, const T* s, Geo g, int64_t n, calc_t<T> a, calc_t<T> b) {
  using C = calc_t<T>;
  ENG_GRID_STRIDE(i, n) {
    int64_t off[2];
    geo_offsets<2>(g, i, off);
    d[off[0]] = st<T>(unary_math<C>(op, ld(s[off[1]]), a, b));
  }
}

template <typename T> __global__ void binary_kernel(BinaryOp op, T* d, const T* x, const T* y, Geo g, int64_t n) {
  using C = calc_t<T>;
  ENG_GRID_STRIDE(i, n) {
    int64_t off[3];
    geo_offsets<3>(g, i, off);
    d[off[0]] = st<T>(binary_math<C>(op, ld(x[off[1]]), ld(y[off[2]])));
  }
}

template <typename T> __global__ void binary_int_kernel(BinaryOp op, T* d, const T* x, const T* y, Geo g, int64_t n) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[3];
    geo_offsets<3>(g, i, off);
    d[off[0]] = binary_int<T>(op, x[off[1]], y[off[2]]);
  }
}

template <typename T, typename C>
__global__ void where_kernel(T* d, const C* c, const T* x, const T* y, Geo g, int64_t n) {
  ENG_GRID_STRIDE(i, n) {
    int64_t off[4];
    geo_offsets<4>(g, i, off);
    d[off[0]] = convert<double, C>(c[off[1]]) != 0.0 ? x[off[2]] : y[off[3]];
  }
}

// One element of a batch of row-major m x n matrices C (ldc, stride_c): bias, pre-activation copy, exact GELU;
// or, with gelu_grad, C *= gelu'(pre) (the backward of a GELU layer, BinaryOp::GeluBackward's math).
template <typename T>
__global__ void gemm_epilogue_kernel(T* c, const T* bias, T* pre, bool gelu, bool gelu_grad, int64_t m, int64_t n,
                                     int64_t ldc, int64_t stride_c, int64_t total) {
  using C = calc_t<T>;
  ENG_GRID_STRIDE(idx, total) {
    const int64_t j = idx % n, row = idx / n;
    const int64_t i = row % m, b = row / m;
    const int64_t off = b * stride_c + i * ldc + j;
    C v = ld(c[off]);
    if (gelu_grad) {
      c[off] = st<T>(v * gelu_exact_grad<C>(ld(pre[off])));
      continue;
    }
    if (bias) v = v + ld(bias[j]);
    if (pre) pre[off] = st<T>(v);
    if (gelu) v = gelu_exact<C>(v);
    c[off] = st<T>(v);
  }
}

template <typename T>
__global__ void scale_c_kernel(T* c, calc_t<T> beta, int64_t m, int64_t n, int64_t ldc, int64_t stride_c, int64_t total) {
  ENG_GRID_STRIDE(idx, total) {
    const int64_t j = idx % n, row = idx / n;
    const int64_t off = (row / m) * stride_c + (row % m) * ldc + j;
    c[off] = beta == calc_t<T>(0) ? st<T>(calc_t<T>(0)) : st<T>(beta * ld(c[off]));  // beta 0 never reads C
  }
}

}  // namespace

void CudaBackend::copy(const TensorDesc& dst, const TensorDesc& src) {
  OpScope scope(*this, "cuda.copy");
  ENG_CHECK(dst.numel() == src.numel(), "copy: {} elements into {}", src.numel(), dst.numel());
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (dst.dtype == src.dtype && dst.contiguous() && src.contiguous()) {
    if (dst.data != src.data)
      CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, size_t(n) * dtype_size(dst.dtype), cudaMemcpyDeviceToDevice, 0));
    return;
  }
  const TensorDesc* ds[2] = {&dst, &src};
  const Geo g = make_geo(ds, 2);
  dispatch_all(dst.dtype, [&](auto dt) {
    using D = decltype(dt);
    dispatch_all(src.dtype, [&](auto stag) {
      using S = decltype(stag);
      copy_kernel<D, S><<<blocks_for(n), kThreads>>>(static_cast<D*>(dst.data), static_cast<const S*>(src.data), g, n);
    });
  });
  CUDA_CHECK_LAUNCH("copy");
}

void CudaBackend::fill(const TensorDesc& dst, double value) {
  OpScope scope(*this, "cuda.fill");
  const int64_t n = dst.numel();
  if (n == 0) return;
  const TensorDesc* ds[1] = {&dst};
  const Geo g = make_geo(ds, 1);
  dispatch_all(dst.dtype, [&](auto t) {
    using T = decltype(t);
    T v;
    if constexpr (std::is_same_v<T, bf16_t>) {
      const bf16 h = bf16(static_cast<float>(value));  // the host's rounding, the same bits as the CPU's fill
      v.bits = h.bits;
    } else {
      v = static_cast<T>(value);
    }
    fill_kernel<T><<<blocks_for(n), kThreads>>>(static_cast<T*>(dst.data), g, n, v);
  });
  CUDA_CHECK_LAUNCH("fill");
}

void CudaBackend::unary(UnaryOp op, const TensorDesc& dst, const TensorDesc& src, UnaryParams p) {
  OpScope scope(*this, "cuda.unary");
  ENG_CHECK(dst.dtype == src.dtype, "unary: dtype {} -> {}", dtype_name(src.dtype), dtype_name(dst.dtype));
  const int64_t n = dst.numel();
  if (n == 0) return;
  const TensorDesc* ds[2] = {&dst, &src};
  const Geo g = make_geo(ds, 2);
  dispatch_float(dst.dtype, "unary op", [&](auto t) {
    using T = decltype(t);
    using C = calc_t<T>;
    unary_kernel<T><<<blocks_for(n), kThreads>>>(op, static_cast<T*>(dst.data), static_cast<const T*>(src.data), g, n,
                                                 C(p.a), C(p.b));
  });
  CUDA_CHECK_LAUNCH("unary");
}

void CudaBackend::binary(BinaryOp op, const TensorDesc& dst, const TensorDesc& a, const TensorDesc& b) {
  OpScope scope(*this, "cuda.binary");
  ENG_CHECK(dst.dtype == a.dtype && a.dtype == b.dtype, "binary: mixed dtypes {}, {} -> {}", dtype_name(a.dtype),
            dtype_name(b.dtype), dtype_name(dst.dtype));
  const int64_t n = dst.numel();
  if (n == 0) return;
  const TensorDesc* ds[3] = {&dst, &a, &b};
  const Geo g = make_geo(ds, 3);
  if (dst.dtype == DType::I32) {
    binary_int_kernel<int32_t><<<blocks_for(n), kThreads>>>(op, static_cast<int32_t*>(dst.data),
                                                            static_cast<const int32_t*>(a.data),
                                                            static_cast<const int32_t*>(b.data), g, n);
  } else if (dst.dtype == DType::I64) {
    binary_int_kernel<int64_t><<<blocks_for(n), kThreads>>>(op, static_cast<int64_t*>(dst.data),
                                                            static_cast<const int64_t*>(a.data),
                                                            static_cast<const int64_t*>(b.data), g, n);
  } else {
    dispatch_float(dst.dtype, "binary op", [&](auto t) {
      using T = decltype(t);
      binary_kernel<T><<<blocks_for(n), kThreads>>>(op, static_cast<T*>(dst.data), static_cast<const T*>(a.data),
                                                    static_cast<const T*>(b.data), g, n);
    });
  }
  CUDA_CHECK_LAUNCH("binary");
}

void CudaBackend::where(const TensorDesc& dst, const TensorDesc& cond, const TensorDesc& a, const TensorDesc& b) {
  OpScope scope(*this, "cuda.where");
  ENG_CHECK(dst.dtype == a.dtype && a.dtype == b.dtype, "where: mixed dtypes");
  const int64_t n = dst.numel();
  if (n == 0) return;
  const TensorDesc* ds[4] = {&dst, &cond, &a, &b};
  const Geo g = make_geo(ds, 4);
  dispatch_by_size(dst.dtype, [&](auto t) {  // selection moves bits: element size is enough
    using T = decltype(t);
    dispatch_all(cond.dtype, [&](auto c) {
      using C = decltype(c);
      where_kernel<T, C><<<blocks_for(n), kThreads>>>(static_cast<T*>(dst.data), static_cast<const C*>(cond.data),
                                                       static_cast<const T*>(a.data), static_cast<const T*>(b.data), g, n);
    });
  });
  CUDA_CHECK_LAUNCH("where");
}

void CudaBackend::gemm_epilogue(const GemmArgs& g, bool bias_done) {
  const bool gelu = g.epilogue == GemmEpilogue::BiasGelu, gelu_grad = g.epilogue == GemmEpilogue::GeluGrad;
  ENG_CHECK(!gelu_grad || g.pre_gelu, "cuda gemm: the GeluGrad epilogue needs pre_gelu");
  const void* bias = bias_done || gelu_grad ? nullptr : g.bias;
  void* pre = gelu || gelu_grad ? g.pre_gelu : nullptr;
  if (!bias && !pre && !gelu) return;
  const int64_t total = g.batch * g.m * g.n;
  dispatch_float(g.dtype, "gemm epilogue", [&](auto t) {
    using T = decltype(t);
    gemm_epilogue_kernel<T><<<blocks_for(total), kThreads>>>(static_cast<T*>(g.c), static_cast<const T*>(bias),
                                                            static_cast<T*>(pre), gelu, gelu_grad, g.m, g.n, g.ldc,
                                                            g.stride_c, total);
  });
  CUDA_CHECK_LAUNCH("gemm_epilogue");
}

void CudaBackend::gemm_scale_c(const GemmArgs& g) {
  if (g.beta == 1.0) return;
  const int64_t total = g.batch * g.m * g.n;
  dispatch_float(g.dtype, "gemm", [&](auto t) {
    using T = decltype(t);
    scale_c_kernel<T><<<blocks_for(total), kThreads>>>(static_cast<T*>(g.c), calc_t<T>(g.beta), g.m, g.n, g.ldc,
                                                      g.stride_c, total);
  });
  CUDA_CHECK_LAUNCH("gemm_scale_c");
}

}  // namespace cuda
}  // namespace eng
