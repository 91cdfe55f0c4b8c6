// cpu_elementwise.cpp: copy, fill, unary, binary and where on the CPU, for any strides.
#include <cstring>
#include <type_traits>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_fused.h"
#include "engine/backends/cpu/cpu_loops.h"
#include "engine/elementwise_math.h"

namespace eng {
using namespace cpu;

namespace {

template <typename D, typename S> inline D convert(S s) { return static_cast<D>(s); }
template <> inline bf16 convert<bf16, float>(float s) { return bf16(s); }
template <> inline bf16 convert<bf16, double>(double s) { return bf16(float(s)); }
template <> inline bf16 convert<bf16, int32_t>(int32_t s) { return bf16(float(s)); }
template <> inline bf16 convert<bf16, int64_t>(int64_t s) { return bf16(float(s)); }
template <> inline bf16 convert<bf16, bf16>(bf16 s) { return s; }
template <> inline float convert<float, bf16>(bf16 s) { return float(s); }
template <> inline double convert<double, bf16>(bf16 s) { return double(float(s)); }
template <> inline int32_t convert<int32_t, bf16>(bf16 s) { return int32_t(float(s)); }
template <> inline int64_t convert<int64_t, bf16>(bf16 s) { return int64_t(float(s)); }

// Calls f with a value of the C++ type that matches dt.
template <typename F> void dispatch_any(DType dt, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
  }
}

}  // namespace

void CpuBackend::copy(const TensorDesc& dst, const TensorDesc& src) {
  ENG_CHECK(dst.numel() == src.numel(), "copy: {} elements into {}", src.numel(), dst.numel());
  if (dst.dtype == src.dtype && dst.contiguous() && src.contiguous()) {
    size_t nbytes = size_t(dst.numel()) * dtype_size(dst.dtype);
    parallel_for(int64_t(nbytes), 1 << 20, [&](int64_t lo, int64_t hi) {
      std::memcpy(static_cast<char*>(dst.data) + lo, static_cast<const char*>(src.data) + lo, size_t(hi - lo));
    });
    return;
  }
  dispatch_any(dst.dtype, [&](auto dtag) {
    using D = decltype(dtag);
    dispatch_any(src.dtype, [&](auto stag) {
      using S = decltype(stag);
      D* d = static_cast<D*>(dst.data);
      const S* s = static_cast<const S*>(src.data);
      const TensorDesc* ds[2] = {&dst, &src};
      for_each_row<2>(ds, [&](const int64_t* base, const int64_t* st, int64_t n) {
        D* dd = d + base[0];
        const S* ss = s + base[1];
        if (st[0] == 1 && st[1] == 1)
          for (int64_t j = 0; j < n; j++) dd[j] = convert<D, S>(ss[j]);
        else
          for (int64_t j = 0; j < n; j++) dd[j * st[0]] = convert<D, S>(ss[j * st[1]]);
      });
    });
  });
}

void CpuBackend::fill(const TensorDesc& dst, double value) {
  dispatch_any(dst.dtype, [&](auto tag) {
    using T = decltype(tag);
    T v = convert<T, double>(value);
    T* d = static_cast<T*>(dst.data);
    const TensorDesc* ds[1] = {&dst};
    for_each_offset<1>(ds, [&](const int64_t* off) { d[off[0]] = v; });
  });
}

void CpuBackend::unary(UnaryOp op, const TensorDesc& dst, const TensorDesc& src, UnaryParams p) {
  ENG_CHECK(dst.dtype == src.dtype, "unary: dtype {} -> {}", dtype_name(src.dtype), dtype_name(dst.dtype));
  ENG_DISPATCH_FLOAT(dst.dtype, "unary op", [&](auto tag) {
    using T = decltype(tag);
    T* d = static_cast<T*>(dst.data);
    const T* s = static_cast<const T*>(src.data);
    T a = T(p.a), b = T(p.b);
    if (dst.contiguous() && src.contiguous()) {
      if constexpr (std::is_same_v<T, float>) {
        if (op == UnaryOp::Gelu) {  // the vectorised polynomial (cpu_fused.cpp): the same values, much faster
          parallel_for(dst.numel(), kBlock, [&](int64_t lo, int64_t hi) { gelu_span_f32(d + lo, s + lo, hi - lo); });
          return;
        }
      }
      parallel_for(dst.numel(), kBlock, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; i++) d[i] = unary_math<T>(op, s[i], a, b);
      });
      return;
    }
    const TensorDesc* ds[2] = {&dst, &src};
    for_each_row<2>(ds, [&](const int64_t* base, const int64_t* st, int64_t n) {
      for (int64_t j = 0; j < n; j++) d[base[0] + j * st[0]] = unary_math<T>(op, s[base[1] + j * st[1]], a, b);
    });
  });
}

void CpuBackend::binary(BinaryOp op, const TensorDesc& dst, const TensorDesc& a, const TensorDesc& b) {
  ENG_CHECK(dst.dtype == a.dtype && a.dtype == b.dtype, "binary: mixed dtypes {}, {} -> {}", dtype_name(a.dtype),
            dtype_name(b.dtype), dtype_name(dst.dtype));
  const TensorDesc* ds[3] = {&dst, &a, &b};
  if (dst.dtype == DType::I64 || dst.dtype == DType::I32) {
    dispatch_any(dst.dtype, [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_integral_v<T>) {
        T* d = static_cast<T*>(dst.data);
        const T* x = static_cast<const T*>(a.data);
        const T* y = static_cast<const T*>(b.data);
        for_each_offset<3>(ds, [&](const int64_t* off) { d[off[0]] = binary_int<T>(op, x[off[1]], y[off[2]]); });
      }
    });
    return;
  }
  ENG_DISPATCH_FLOAT(dst.dtype, "binary op", [&](auto tag) {
    using T = decltype(tag);
    T* d = static_cast<T*>(dst.data);
    const T* x = static_cast<const T*>(a.data);
    const T* y = static_cast<const T*>(b.data);
    if (dst.contiguous() && a.contiguous() && b.contiguous()) {
      if constexpr (std::is_same_v<T, float>) {
        if (op == BinaryOp::GeluBackward) {  // a = the GELU's input, b = the incoming gradient
          parallel_for(dst.numel(), kBlock,
                       [&](int64_t lo, int64_t hi) { gelu_backward_span_f32(d + lo, x + lo, y + lo, hi - lo); });
          return;
        }
      }
      parallel_for(dst.numel(), kBlock, [&](int64_t lo, int64_t hi) {
        switch (op) {  // the common ops get loops the compiler vectorises
          case BinaryOp::Add: for (int64_t i = lo; i < hi; i++) d[i] = x[i] + y[i]; break;
          case BinaryOp::Sub: for (int64_t i = lo; i < hi; i++) d[i] = x[i] - y[i]; break;
          case BinaryOp::Mul: for (int64_t i = lo; i < hi; i++) d[i] = x[i] * y[i]; break;
          case BinaryOp::Div: for (int64_t i = lo; i < hi; i++) d[i] = x[i] / y[i]; break;
          default: for (int64_t i = lo; i < hi; i++) d[i] = binary_math<T>(op, x[i], y[i]);
        }
      });
      return;
    }
    // Broadcasting (bias adds, per-row scales): tight loops per row, specialised on unit/zero strides.
    for_each_row<3>(ds, [&](const int64_t* base, const int64_t* st, int64_t n) {
      T* dd = d + base[0];
      const T* xx = x + base[1];
      const T* yy = y + base[2];
      if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
        const T yv = yy[0];
        for (int64_t j = 0; j < n; j++) dd[j] = binary_math<T>(op, xx[j], yv);
      } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
        const T xv = xx[0];
        for (int64_t j = 0; j < n; j++) dd[j] = binary_math<T>(op, xv, yy[j]);
      } else if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
        for (int64_t j = 0; j < n; j++) dd[j] = binary_math<T>(op, xx[j], yy[j]);
      } else {
        for (int64_t j = 0; j < n; j++) dd[j * st[0]] = binary_math<T>(op, xx[j * st[1]], yy[j * st[2]]);
      }
    });
  });
}

void CpuBackend::where(const TensorDesc& dst, const TensorDesc& cond, const TensorDesc& a, const TensorDesc& b) {
  ENG_CHECK(dst.dtype == a.dtype && a.dtype == b.dtype, "where: mixed dtypes");
  dispatch_any(dst.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_any(cond.dtype, [&](auto ctag) {
      using C = decltype(ctag);
      T* d = static_cast<T*>(dst.data);
      const C* c = static_cast<const C*>(cond.data);
      const T* x = static_cast<const T*>(a.data);
      const T* y = static_cast<const T*>(b.data);
      const TensorDesc* ds[4] = {&dst, &cond, &a, &b};
      for_each_offset<4>(ds, [&](const int64_t* off) {
        d[off[0]] = convert<double, C>(c[off[1]]) != 0.0 ? x[off[2]] : y[off[3]];
      });
    });
  });
}

}  // namespace eng
