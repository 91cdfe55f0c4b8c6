// cuda_attention.cu: fused scaled-dot-product attention, forward and backward (AttentionArgs in backend.h),
// for f32, bf16 (arithmetic in f32) and f64, head sizes up to 128 (f64: 64).
//
// Forward (flash-attention style, one pass over the keys): a block of 4 warps takes 4 query rows of one
// (batch, head); tiles of 32 keys and values are staged in shared memory; lane j scores key j of the tile,
// and the row keeps a running maximum m, a running sum l and an output accumulator (lane u holds dims u, u+32,
// ...) rescaled by exp(m_old - m_new) per tile. Writes out = acc / l and lse = m + log(l).
// Backward, with P recomputed from lse (no T x T matrix is stored):
//   D_i = sum_d dO_i[d] O_i[d];  P_ij = exp(scale q_i.k_j - lse_i);  dS_ij = P_ij (dO_i.v_j - D_i)
//   dQ_i = scale sum_j dS_ij k_j   (a warp per query row, walking the key tiles)
//   dK_j = scale sum_i dS_ij q_i,  dV_j = sum_i P_ij dO_i   (a warp per key row, walking the query tiles)
// Every sum runs in a fixed order inside one warp; dQ and dK/dV come from separate kernels instead of atomics,
// so results repeat bit for bit.
// Layouts: rows of q/dq, k/dk, v/dv and out/dout are addressed through the [batch, heads, tokens] strides of
// AttentionArgs (the last dim contiguous), so q, k, v can be views of a packed qkv projection and out can be
// [batch, tokens, heads, dim] with no copies (supports_strided_attention()); lse is contiguous [batch, heads, tq].
//
// cuDNN's fused SDPA is not used: it takes only fp16/bf16 inputs while the engine's attention runs in f32, and
// without the cuDNN frontend its graph must be built through the raw backend API, which could not be validated
// on a GPU when this was written. This kernel is the CUDA path for every dtype.
#include <cmath>

#include "engine/backends/cuda/cuda_common.cuh"

namespace eng {
namespace cuda {
namespace {

constexpr int kAttnWarps = 4;   // query (or key) rows per block
constexpr int kTile = 32;       // keys (or queries) per shared-memory tile: one per lane
constexpr int kMaxDimF32 = 128;
constexpr int kMaxDimF64 = 64;
constexpr int kMaxAcc = 4;      // per-lane accumulator slots: head dims up to 4 * 32

struct PlainMax {
  template <typename A> __device__ A operator()(A a, A b) const { return b > a ? b : a; }
};

// Element strides of the [batch, heads, tokens] dims of one operand.
struct Rows {
  int64_t b = 0, h = 0, t = 0;
  __device__ int64_t base(int64_t bh, int64_t heads) const { return (bh / heads) * b + (bh % heads) * h; }
};

template <typename A> __device__ inline A dot_row(const A* x, const A* y, int64_t n) {
  A s = A(0);
  for (int64_t d = 0; d < n; d++) s += x[d] * y[d];
  return s;
}

// Copies rows [r0, r0 + kTile) of a [rows, cols] matrix (row stride `pitch`) into a padded shared tile (row pitch
// cols + 1, so lane j reading row j hits distinct banks); rows past the end are zero.
template <typename T, typename A>
__device__ inline void load_tile(A* tile, const T* src, int64_t pitch, int64_t r0, int64_t rows, int64_t cols) {
  for (int64_t e = threadIdx.x; e < kTile * cols; e += blockDim.x) {
    const int64_t r = e / cols, c = e % cols;
    tile[r * (cols + 1) + c] = r0 + r < rows ? A(ld(src[(r0 + r) * pitch + c])) : A(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                             calc_t<T>* __restrict__ lse, int64_t bh_count, int64_t heads, int64_t tq, int64_t tk,
                             int64_t dk, int64_t dv, Rows qr, Rows kr, Rows vr, Rows orr, calc_t<T> scale) {
  using A = calc_t<T>;
  extern __shared__ unsigned char smem_raw[];
  A* ks = reinterpret_cast<A*>(smem_raw);
  A* vs = ks + kTile * (dk + 1);
  A* qs = vs + kTile * (dv + 1);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kAttnWarps + warp;
  const bool valid = i < tq;
  A* qrow = qs + warp * dk;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    const T* qb = q + qr.base(bh, heads);
    const T* kb = k + kr.base(bh, heads);
    const T* vb = v + vr.base(bh, heads);
    if (valid)
      for (int64_t d = lane; d < dk; d += 32) qrow[d] = A(ld(qb[i * qr.t + d]));
    A m = A(-INFINITY), l = A(0), acc[kMaxAcc];
    for (int u = 0; u < kMaxAcc; u++) acc[u] = A(0);
    for (int64_t t0 = 0; t0 < tk; t0 += kTile) {
      __syncthreads();  // the previous tile (and qrow writes) are done
      load_tile(ks, kb, kr.t, t0, tk, dk);
      load_tile(vs, vb, vr.t, t0, tk, dv);
      __syncthreads();
      if (!valid) continue;
      const bool key = t0 + lane < tk;
      const A s = key ? dot_row(qrow, ks + lane * (dk + 1), dk) * scale : A(-INFINITY);
      const A m_new = PlainMax()(m, warp_allreduce(s, PlainMax()));
      const A p = key ? A(::exp(s - m_new)) : A(0);
      const A corr = A(::exp(m - m_new));
      l = l * corr + warp_allreduce(p, SumOp());
      for (int u = 0; u < kMaxAcc; u++) acc[u] *= corr;
      const int keys = int(tk - t0 < kTile ? tk - t0 : kTile);
      for (int jj = 0; jj < keys; jj++) {
        const A pj = __shfl_sync(0xffffffffu, p, jj);
        const A* vrow = vs + jj * (dv + 1);
        for (int u = 0; u < kMaxAcc; u++) {
          const int64_t d = lane + 32 * u;
          if (d < dv) acc[u] += pj * vrow[d];
        }
      }
      m = m_new;
    }
    if (valid) {
      T* orow = out + orr.base(bh, heads) + i * orr.t;
      for (int u = 0; u < kMaxAcc; u++) {
        const int64_t d = lane + 32 * u;
        if (d < dv) orow[d] = st<T>(acc[u] / l);
      }
      if (lane == 0) lse[bh * tq + i] = m + A(::log(l));
    }
    __syncthreads();  // qrow is rewritten for the next (batch, head)
  }
}

// D_i = sum_d dO_i[d] * O_i[d]: a warp per row.
template <typename T>
__global__ void attention_delta_kernel(calc_t<T>* __restrict__ delta, const T* __restrict__ dout, const T* __restrict__ out,
                                       int64_t rows, int64_t heads, int64_t tq, int64_t dv, Rows orr) {
  using A = calc_t<T>;
  constexpr int kWarps = kThreads / 32;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + warp; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const int64_t off = orr.base(r / tq, heads) + (r % tq) * orr.t;  // row r = (batch, head) * tq + i
    A s = A(0);
    for (int64_t d = lane; d < dv; d += 32) s += A(ld(dout[off + d])) * A(ld(out[off + d]));
    s = warp_allreduce(s, SumOp());
    if (lane == 0) delta[r] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_dq_kernel(T* __restrict__ dq, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ dout, const calc_t<T>* __restrict__ lse,
                        const calc_t<T>* __restrict__ delta, int64_t bh_count, int64_t heads, int64_t tq, int64_t tk,
                        int64_t dk, int64_t dv, Rows qr, Rows kr, Rows vr, Rows orr, calc_t<T> scale) {
  using A = calc_t<T>;
  extern __shared__ unsigned char smem_raw[];
  A* ks = reinterpret_cast<A*>(smem_raw);
  A* vs = ks + kTile * (dk + 1);
  A* qs = vs + kTile * (dv + 1);
  A* gs = qs + kAttnWarps * dk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kAttnWarps + warp;
  const bool valid = i < tq;
  A* qrow = qs + warp * dk;
  A* grow = gs + warp * dv;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    const T* kb = k + kr.base(bh, heads);
    const T* vb = v + vr.base(bh, heads);
    const int64_t qoff = qr.base(bh, heads) + i * qr.t, ooff = orr.base(bh, heads) + i * orr.t;
    A lse_i = A(0), delta_i = A(0);
    if (valid) {
      for (int64_t d = lane; d < dk; d += 32) qrow[d] = A(ld(q[qoff + d]));
      for (int64_t d = lane; d < dv; d += 32) grow[d] = A(ld(dout[ooff + d]));
      lse_i = lse[bh * tq + i];
      delta_i = delta[bh * tq + i];
    }
    A acc[kMaxAcc];
    for (int u = 0; u < kMaxAcc; u++) acc[u] = A(0);
    for (int64_t t0 = 0; t0 < tk; t0 += kTile) {
      __syncthreads();
      load_tile(ks, kb, kr.t, t0, tk, dk);
      load_tile(vs, vb, vr.t, t0, tk, dv);
      __syncthreads();
      if (!valid) continue;
      A ds = A(0);
      if (t0 + lane < tk) {
        const A s = dot_row(qrow, ks + lane * (dk + 1), dk) * scale;
        const A p = A(::exp(s - lse_i));
        const A dp = dot_row(grow, vs + lane * (dv + 1), dv);
        ds = p * (dp - delta_i);
      }
      const int keys = int(tk - t0 < kTile ? tk - t0 : kTile);
      for (int jj = 0; jj < keys; jj++) {
        const A dsj = __shfl_sync(0xffffffffu, ds, jj);
        const A* krow = ks + jj * (dk + 1);
        for (int u = 0; u < kMaxAcc; u++) {
          const int64_t d = lane + 32 * u;
          if (d < dk) acc[u] += dsj * krow[d];
        }
      }
    }
    if (valid) {
      T* out = dq + qoff;
      for (int u = 0; u < kMaxAcc; u++) {
        const int64_t d = lane + 32 * u;
        if (d < dk) out[d] = st<T>(acc[u] * scale);
      }
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_dkdv_kernel(T* __restrict__ dkey, T* __restrict__ dval, const T* __restrict__ q, const T* __restrict__ k,
                          const T* __restrict__ v, const T* __restrict__ dout, const calc_t<T>* __restrict__ lse,
                          const calc_t<T>* __restrict__ delta, int64_t bh_count, int64_t heads, int64_t tq, int64_t tk,
                          int64_t dk, int64_t dv, Rows qr, Rows kr, Rows vr, Rows orr, calc_t<T> scale) {
  using A = calc_t<T>;
  extern __shared__ unsigned char smem_raw[];
  A* qs = reinterpret_cast<A*>(smem_raw);    // kTile query rows
  A* gs = qs + kTile * (dk + 1);             // kTile dO rows
  A* lse_s = gs + kTile * (dv + 1);          // kTile
  A* delta_s = lse_s + kTile;                // kTile
  A* krows = delta_s + kTile;                // kAttnWarps key rows
  A* vrows = krows + kAttnWarps * dk;        // kAttnWarps value rows
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t j = int64_t(blockIdx.x) * kAttnWarps + warp;
  const bool valid = j < tk;
  A* krow = krows + warp * dk;
  A* vrow = vrows + warp * dv;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    const T* qb = q + qr.base(bh, heads);
    const T* gb = dout + orr.base(bh, heads);
    const int64_t koff = kr.base(bh, heads) + j * kr.t, voff = vr.base(bh, heads) + j * vr.t;
    if (valid) {
      for (int64_t d = lane; d < dk; d += 32) krow[d] = A(ld(k[koff + d]));
      for (int64_t d = lane; d < dv; d += 32) vrow[d] = A(ld(v[voff + d]));
    }
    A acc_k[kMaxAcc], acc_v[kMaxAcc];
    for (int u = 0; u < kMaxAcc; u++) acc_k[u] = acc_v[u] = A(0);
    for (int64_t i0 = 0; i0 < tq; i0 += kTile) {
      __syncthreads();
      load_tile(qs, qb, qr.t, i0, tq, dk);
      load_tile(gs, gb, orr.t, i0, tq, dv);
      for (int64_t r = threadIdx.x; r < kTile; r += blockDim.x) {
        lse_s[r] = i0 + r < tq ? lse[bh * tq + i0 + r] : A(0);
        delta_s[r] = i0 + r < tq ? delta[bh * tq + i0 + r] : A(0);
      }
      __syncthreads();
      if (!valid) continue;
      A p = A(0), ds = A(0);
      if (i0 + lane < tq) {
        const A s = dot_row(qs + lane * (dk + 1), krow, dk) * scale;
        p = A(::exp(s - lse_s[lane]));
        const A dp = dot_row(gs + lane * (dv + 1), vrow, dv);
        ds = p * (dp - delta_s[lane]);
      }
      const int queries = int(tq - i0 < kTile ? tq - i0 : kTile);
      for (int ii = 0; ii < queries; ii++) {
        const A pi = __shfl_sync(0xffffffffu, p, ii);
        const A dsi = __shfl_sync(0xffffffffu, ds, ii);
        const A* qr = qs + ii * (dk + 1);
        const A* gr = gs + ii * (dv + 1);
        for (int u = 0; u < kMaxAcc; u++) {
          const int64_t d = lane + 32 * u;
          if (d < dv) acc_v[u] += pi * gr[d];
          if (d < dk) acc_k[u] += dsi * qr[d];
        }
      }
    }
    if (valid) {
      T* ko = dkey + koff;
      T* vo = dval + voff;
      for (int u = 0; u < kMaxAcc; u++) {
        const int64_t d = lane + 32 * u;
        if (d < dk) ko[d] = st<T>(acc_k[u] * scale);
        if (d < dv) vo[d] = st<T>(acc_v[u]);
      }
    }
    __syncthreads();
  }
}

// Zeroes a [batch * heads, tokens, dim] operand laid out with row strides r (the degenerate tq == 0 / tk == 0 cases).
template <typename T> __global__ void zero_rows_kernel(T* __restrict__ p, Rows r, int64_t heads, int64_t tokens, int64_t dim,
                                                       int64_t total) {
  ENG_GRID_STRIDE(e, total) {
    const int64_t d = e % dim, t = (e / dim) % tokens, bh = e / (dim * tokens);
    p[r.base(bh, heads) + t * r.t + d] = T{};
  }
}

void zero_rows(void* p, DType dt, Rows r, int64_t bh, int64_t heads, int64_t tokens, int64_t dim) {
  const int64_t total = bh * tokens * dim;
  if (!p || total == 0) return;
  dispatch_by_size(dt, [&](auto t) {
    using T = decltype(t);
    zero_rows_kernel<T><<<blocks_for(total), kThreads>>>(static_cast<T*>(p), r, heads, tokens, dim, total);
  });
  CUDA_CHECK_LAUNCH("attention (zero fill)");
}

int64_t max_head_dim(DType dt) { return dt == DType::F64 ? kMaxDimF64 : kMaxDimF32; }

void check_attention(const AttentionArgs& a, const char* op) {
  ENG_CHECK(a.batch >= 0 && a.heads >= 0 && a.tq >= 0 && a.tk >= 0, "{}: negative size", op);
  ENG_CHECK(a.head_dim >= 1 && a.v_dim >= 1 && a.head_dim <= max_head_dim(a.dtype) && a.v_dim <= max_head_dim(a.dtype),
            "{}: head dims {} / {} outside the fused kernel's range [1, {}] for {}; use the unfused path "
            "(has_fused_attention() says which)",
            op, a.head_dim, a.v_dim, max_head_dim(a.dtype), dtype_name(a.dtype));
  ENG_CHECK(a.dtype == DType::F32 || a.dtype == DType::F64 || a.dtype == DType::BF16,
            "{}: dtype {} is not supported (f32, f64, bf16)", op, dtype_name(a.dtype));
}

// The strides given in AttentionArgs, or those of a contiguous [batch, heads, tokens, dim] tensor.
Rows rows_of(const int64_t* s, int64_t heads, int64_t tokens, int64_t dim) {
  Rows r;
  if (s[0] == 0 && s[1] == 0 && s[2] == 0) {
    r.b = heads * tokens * dim;
    r.h = tokens * dim;
    r.t = dim;
  } else {
    r.b = s[0];
    r.h = s[1];
    r.t = s[2];
  }
  return r;
}

dim3 attention_grid(int64_t rows, int64_t bh) {
  return dim3(unsigned((rows + kAttnWarps - 1) / kAttnWarps), unsigned(std::min<int64_t>(bh, 65535)));
}

}  // namespace

// bf16 (mixed precision): q, k, v, out and their gradients in bf16; scores, probabilities, the row statistics (lse
// in f32, as engine/ops/nn.cpp allocates it) and every accumulator in f32.
bool CudaBackend::has_fused_attention(DType dt, int64_t head_dim, int64_t v_dim) const {
  if (dt != DType::F32 && dt != DType::F64 && dt != DType::BF16) return false;
  return head_dim >= 1 && v_dim >= 1 && head_dim <= max_head_dim(dt) && v_dim <= max_head_dim(dt);
}

bool CudaBackend::supports_strided_attention() const { return true; }

void CudaBackend::attention_forward(const AttentionArgs& a) {
  OpScope scope(*this, "cuda.attention_forward");
  check_attention(a, "attention_forward");
  const int64_t bh = a.batch * a.heads;
  if (bh == 0 || a.tq == 0) return;
  if (a.tk == 0) {  // softmax over no keys: the output is an empty sum
    zero_rows(a.out, a.dtype, rows_of(a.o_strides, a.heads, a.tq, a.v_dim), bh, a.heads, a.tq, a.v_dim);
    return;
  }
  ENG_CHECK((a.tq + kAttnWarps - 1) / kAttnWarps <= int64_t(INT32_MAX), "attention_forward: too many query rows");
  dispatch_float(a.dtype, "attention_forward", [&](auto t) {
    using T = decltype(t);
    using A = calc_t<T>;
    const size_t smem = size_t(kTile * (a.head_dim + 1) + kTile * (a.v_dim + 1) + kAttnWarps * a.head_dim) * sizeof(A);
    attention_forward_kernel<T><<<attention_grid(a.tq, bh), kAttnWarps * 32, smem>>>(
        static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.v), static_cast<T*>(a.out),
        static_cast<A*>(a.lse), bh, a.heads, a.tq, a.tk, a.head_dim, a.v_dim, rows_of(a.q_strides, a.heads, a.tq, a.head_dim),
        rows_of(a.k_strides, a.heads, a.tk, a.head_dim), rows_of(a.v_strides, a.heads, a.tk, a.v_dim),
        rows_of(a.o_strides, a.heads, a.tq, a.v_dim), A(a.scale));
  });
  CUDA_CHECK_LAUNCH("attention_forward");
}

void CudaBackend::attention_backward(const AttentionArgs& a) {
  OpScope scope(*this, "cuda.attention_backward");
  check_attention(a, "attention_backward");
  const int64_t bh = a.batch * a.heads;
  if (bh == 0) return;
  if (a.tq == 0 || a.tk == 0) {  // no scores: every gradient is zero
    zero_rows(a.dq, a.dtype, rows_of(a.q_strides, a.heads, a.tq, a.head_dim), bh, a.heads, a.tq, a.head_dim);
    zero_rows(a.dk, a.dtype, rows_of(a.k_strides, a.heads, a.tk, a.head_dim), bh, a.heads, a.tk, a.head_dim);
    zero_rows(a.dv, a.dtype, rows_of(a.v_strides, a.heads, a.tk, a.v_dim), bh, a.heads, a.tk, a.v_dim);
    return;
  }
  ENG_CHECK(a.dq && a.dk && a.dv, "attention_backward: dq, dk and dv must all be set");
  dispatch_float(a.dtype, "attention_backward", [&](auto t) {
    using T = decltype(t);
    using A = calc_t<T>;
    const Rows qr = rows_of(a.q_strides, a.heads, a.tq, a.head_dim), kr = rows_of(a.k_strides, a.heads, a.tk, a.head_dim);
    const Rows vr = rows_of(a.v_strides, a.heads, a.tk, a.v_dim), orr = rows_of(a.o_strides, a.heads, a.tq, a.v_dim);
    DeviceBuffer delta(device(), size_t(bh * a.tq) * sizeof(A));
    attention_delta_kernel<T><<<blocks_for(bh * a.tq, kThreads / 32), kThreads>>>(
        delta.as<A>(), static_cast<const T*>(a.dout), static_cast<const T*>(a.out), bh * a.tq, a.heads, a.tq, a.v_dim, orr);
    CUDA_CHECK_LAUNCH("attention_backward (delta)");
    const size_t smem_dq =
        size_t(kTile * (a.head_dim + 1) + kTile * (a.v_dim + 1) + kAttnWarps * (a.head_dim + a.v_dim)) * sizeof(A);
    attention_dq_kernel<T><<<attention_grid(a.tq, bh), kAttnWarps * 32, smem_dq>>>(
        static_cast<T*>(a.dq), static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.v),
        static_cast<const T*>(a.dout), static_cast<const A*>(a.lse), delta.as<A>(), bh, a.heads, a.tq, a.tk, a.head_dim,
        a.v_dim, qr, kr, vr, orr, A(a.scale));
    CUDA_CHECK_LAUNCH("attention_backward (dq)");
    const size_t smem_dkv = size_t(kTile * (a.head_dim + 1) + kTile * (a.v_dim + 1) + 2 * kTile +
                                   kAttnWarps * (a.head_dim + a.v_dim)) * sizeof(A);
    attention_dkdv_kernel<T><<<attention_grid(a.tk, bh), kAttnWarps * 32, smem_dkv>>>(
        static_cast<T*>(a.dk), static_cast<T*>(a.dv), static_cast<const T*>(a.q), static_cast<const T*>(a.k),
        static_cast<const T*>(a.v), static_cast<const T*>(a.dout), static_cast<const A*>(a.lse), delta.as<A>(), bh,
        a.heads, a.tq, a.tk, a.head_dim, a.v_dim, qr, kr, vr, orr, A(a.scale));
    CUDA_CHECK_LAUNCH("attention_backward (dk, dv)");
  });
}

}  // namespace cuda
}  // namespace eng
