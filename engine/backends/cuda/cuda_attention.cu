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
// bf16 with head dims that are multiples of 16 up to 64 (ViT-B/16: 64; mae_tiny: 64 and 32) takes the tensor-core
// path at the end of this file instead (WMMA, see there).
//
// For bf16, cuDNN's fused SDPA runs instead where it can (cuda_attention_cudnn.cu, attention_impl.h); these kernels
// serve every other call and are the reference each cuDNN plan is checked against on its first call.
#include <mma.h>

#include <cmath>
#include <type_traits>

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

// One operand's strides in effect (AttentionArgs::q_rows() and the like), for the kernels.
Rows rows_of(const RowStrides& s) {
  Rows r;
  r.b = s.b;
  r.h = s.h;
  r.t = s.t;
  return r;
}

dim3 attention_grid(int64_t rows, int64_t bh) {
  return dim3(unsigned((rows + kAttnWarps - 1) / kAttnWarps), unsigned(std::min<int64_t>(bh, 65535)));
}


// ---------------------------------------------------------------- tensor-core path (bf16)
//
// bf16 operands whose head dims are multiples of 16 up to 64 go to tensor cores through the warp matrix API
// (nvcuda::wmma: 16 x 16 x 16 bf16 products with f32 accumulation, sm_80 and later). A block of 4 warps owns 64
// rows (query rows for the forward pass and dQ, key rows for dK / dV), 16 per warp, and walks the other side in
// tiles of 32 staged in shared memory. Scores, probabilities, row statistics and every accumulator are f32; the
// left operand of the second product of each step (P for P V, dS for dS K, P^T and dS^T for P^T dO and dS^T Q) is
// rounded to bf16 first, as flash attention does; the tests' bf16 bounds account for it. The elementwise work
// (online softmax, P, dS) runs on two lanes per row over shared memory, and fragment elements are never indexed,
// so nothing depends on the hardware's fragment layout. Every sum has a fixed order and there are no atomics, so
// results repeat bit for bit.
// Shared memory: rows are padded (bf16 tiles by 8 elements, f32 tiles by 4) so that neither the fragment loads nor
// the two-lanes-per-row passes hit one bank from many lanes; a warp's bf16 P (or dS) is written over its own rows
// of the f32 scores once it has read them. Every kernel stays under the 48 KiB a block gets without opting in.

namespace wm = nvcuda::wmma;
using FragA = wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, wm::row_major>;
using FragBRow = wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::row_major>;
using FragBCol = wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::col_major>;
using FragC = wm::fragment<wm::accumulator, 16, 16, 16, float>;

constexpr int kTcWarps = 4;
constexpr int kTcRows = 16 * kTcWarps;  // rows a block owns
constexpr int kTcTile = 32;             // rows of the other side per shared tile
constexpr int kTcMaxDim = 64;
constexpr int kPadBf16 = 8;                    // elements added to each bf16 row (16 bytes)
constexpr int kPadF32 = 4;                     // elements added to each f32 row (16 bytes)
constexpr int kLdS = kTcTile + kPadF32;        // row pitch of the f32 score tiles
constexpr int kLdP = kTcTile + kPadBf16;       // row pitch of the bf16 P / dS tiles

bool tc_attention_ok(const AttentionArgs& a) {
  return a.dtype == DType::BF16 && a.head_dim % 16 == 0 && a.v_dim % 16 == 0 && a.head_dim <= kTcMaxDim &&
         a.v_dim <= kTcMaxDim;
}

// Shared memory handed out in 128-byte aligned pieces (WMMA needs 256-bit aligned pointers); the tc_*_smem
// functions add the same pieces up on the host.
constexpr size_t round128(size_t b) { return (b + 127) / 128 * 128; }
struct SmemCarve {
  unsigned char* p;
  template <typename E> __device__ E* take(int64_t n) {
    E* r = reinterpret_cast<E*>(p);
    p += round128(size_t(n) * sizeof(E));
    return r;
  }
};

__device__ inline const __nv_bfloat16* wmma_ptr(const bf16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

// Rows [r0, r0 + n) of a [rows, cols] bf16 operand (row stride pitch) into a shared tile of row pitch ld (cols is a
// multiple of 16, ld a multiple of 8); rows past the end are 0. 16-byte moves when every source row is 16-byte
// aligned.
__device__ inline void tc_load(bf16_t* tile, int ld, const bf16_t* src, int64_t pitch, int64_t r0, int n, int64_t rows,
                               int cols) {
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0 && pitch % 8 == 0) {
    const int per_row = cols / 8;
    for (int e = threadIdx.x; e < n * per_row; e += blockDim.x) {
      const int r = e / per_row, c = (e % per_row) * 8;
      uint4 x = make_uint4(0u, 0u, 0u, 0u);
      if (r0 + r < rows) x = *reinterpret_cast<const uint4*>(src + (r0 + r) * pitch + c);
      *reinterpret_cast<uint4*>(tile + r * ld + c) = x;
    }
    return;
  }
  for (int e = threadIdx.x; e < n * cols; e += blockDim.x) {
    const int r = e / cols, c = e % cols;
    tile[r * ld + c] = r0 + r < rows ? src[(r0 + r) * pitch + c] : bf16_t{0};
  }
}

// C (16 x 16, f32, row pitch ldc) = A (16 x kdim, bf16, row pitch lda) B^T with B stored as 16 rows of kdim (row
// pitch ldb): 16 rows scored against 16 keys, or any product with a transposed right operand.
__device__ inline void tc_product_nt(float* c, int ldc, const bf16_t* a, int lda, const bf16_t* b, int ldb, int kdim) {
  FragC acc;
  wm::fill_fragment(acc, 0.0f);
  for (int kk = 0; kk < kdim / 16; kk++) {
    FragA fa;
    FragBCol fb;
    wm::load_matrix_sync(fa, wmma_ptr(a + 16 * kk), unsigned(lda));
    wm::load_matrix_sync(fb, wmma_ptr(b + 16 * kk), unsigned(ldb));
    wm::mma_sync(acc, fa, fb, acc);
  }
  wm::store_matrix_sync(c, acc, unsigned(ldc), wm::mem_row_major);
}

// acc += A (16 x 32, bf16, row pitch lda) B (32 x 16, bf16, row pitch ldb).
__device__ inline void tc_accumulate_nn(FragC& acc, const bf16_t* a, int lda, const bf16_t* b, int ldb) {
  for (int kk = 0; kk < kTcTile / 16; kk++) {
    FragA fa;
    FragBRow fb;
    wm::load_matrix_sync(fa, wmma_ptr(a + 16 * kk), unsigned(lda));
    wm::load_matrix_sync(fb, wmma_ptr(b + 16 * kk * ldb), unsigned(ldb));
    wm::mma_sync(acc, fa, fb, acc);
  }
}

__global__ void __launch_bounds__(kTcWarps * 32)
    attention_forward_tc_kernel(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                bf16_t* __restrict__ out, float* __restrict__ lse, int64_t bh_count, int64_t heads,
                                int64_t tq, int64_t tk, int dk, int dv, Rows qr, Rows kr, Rows vr, Rows orr, float scale) {
  extern __shared__ __align__(128) unsigned char smem_tc[];
  const int ldq = dk + kPadBf16, ldv = dv + kPadBf16, ldo = dv + kPadF32;
  SmemCarve sm{smem_tc};
  bf16_t* qs = sm.take<bf16_t>(kTcRows * ldq);
  bf16_t* ks = sm.take<bf16_t>(kTcTile * ldq);
  bf16_t* vs = sm.take<bf16_t>(kTcTile * ldv);
  float* ss = sm.take<float>(kTcRows * kLdS);  // scores; each warp's rows then hold its bf16 P
  float* os = sm.take<float>(kTcRows * ldo);   // output accumulator
  float* ms = sm.take<float>(kTcRows);         // running maximum
  float* ls = sm.take<float>(kTcRows);         // running sum
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = 16 * warp;                          // the warp's first row
  const int r = wr + (lane >> 1), half = lane & 1;   // this lane's row, and which 16 of the tile's columns
  bf16_t* ps = reinterpret_cast<bf16_t*>(ss + wr * kLdS);  // the warp's P: 16 rows of pitch kLdP
  const int64_t i0 = int64_t(blockIdx.x) * kTcRows;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    tc_load(qs, ldq, q + qr.base(bh, heads), qr.t, i0, kTcRows, tq, dk);
    for (int e = threadIdx.x; e < kTcRows * ldo; e += blockDim.x) os[e] = 0.0f;
    for (int e = threadIdx.x; e < kTcRows; e += blockDim.x) {
      ms[e] = -INFINITY;
      ls[e] = 0.0f;
    }
    for (int64_t t0 = 0; t0 < tk; t0 += kTcTile) {
      __syncthreads();  // the previous tile's readers are done; the set-up above is visible
      tc_load(ks, ldq, k + kr.base(bh, heads), kr.t, t0, kTcTile, tk, dk);
      tc_load(vs, ldv, v + vr.base(bh, heads), vr.t, t0, kTcTile, tk, dv);
      __syncthreads();
      for (int c = 0; c < kTcTile / 16; c++)
        tc_product_nt(ss + wr * kLdS + 16 * c, kLdS, qs + wr * ldq, ldq, ks + 16 * c * ldq, ldq, dk);
      __syncwarp();
      // Online softmax over this tile; both lanes of a row read its statistics and scores before anything of the
      // row is rewritten.
      const float m_old = ms[r], l_old = ls[r];
      float sv[16], mx = -INFINITY;
      for (int j = 0; j < 16; j++) {
        const int col = 16 * half + j;
        sv[j] = t0 + col < tk ? ss[r * kLdS + col] * scale : -INFINITY;
        mx = fmaxf(mx, sv[j]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_new = fmaxf(m_old, mx);  // finite: the tile holds at least one key
      const float corr = expf(m_old - m_new);
      __syncwarp();  // every lane has its scores: P may overwrite them
      float sum = 0.0f;
      for (int j = 0; j < 16; j++) {
        const float p = expf(sv[j] - m_new);  // 0 past the last key
        sum += p;
        ps[(r - wr) * kLdP + 16 * half + j] = float_to_bf16(p);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      for (int c = half; c < dv; c += 2) os[r * ldo + c] *= corr;
      __syncwarp();  // P and the rescaled O are visible to the warp
      if (half == 0) {
        ms[r] = m_new;
        ls[r] = l_old * corr + sum;
      }
      for (int c = 0; c < dv / 16; c++) {
        FragC acc;
        wm::load_matrix_sync(acc, os + wr * ldo + 16 * c, unsigned(ldo), wm::mem_row_major);
        tc_accumulate_nn(acc, ps, kLdP, vs + 16 * c, ldv);
        wm::store_matrix_sync(os + wr * ldo + 16 * c, acc, unsigned(ldo), wm::mem_row_major);
      }
    }
    __syncwarp();
    const int64_t obase = orr.base(bh, heads);
    for (int e = lane; e < 16 * dv; e += 32) {
      const int rr = wr + e / dv, c = e % dv;
      if (i0 + rr < tq) out[obase + (i0 + rr) * orr.t + c] = float_to_bf16(os[rr * ldo + c] / ls[rr]);
    }
    if (lane < 16 && i0 + wr + lane < tq) lse[bh * tq + i0 + wr + lane] = ms[wr + lane] + logf(ls[wr + lane]);
    __syncthreads();  // shared memory is rewritten for the next (batch, head)
  }
}

// dQ = scale dS K with dS = P (dP - D), P = exp(scale Q K^T - lse), dP = dO V^T: a block owns 64 query rows and walks
// the keys; dQ stays in fragments until the end.
__global__ void __launch_bounds__(kTcWarps * 32)
    attention_dq_tc_kernel(bf16_t* __restrict__ dq, const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                           const bf16_t* __restrict__ v, const bf16_t* __restrict__ dout, const float* __restrict__ lse,
                           const float* __restrict__ delta, int64_t bh_count, int64_t heads, int64_t tq, int64_t tk,
                           int dk, int dv, Rows qr, Rows kr, Rows vr, Rows orr, float scale) {
  extern __shared__ __align__(128) unsigned char smem_tc[];
  const int ldq = dk + kPadBf16, ldv = dv + kPadBf16, ldst = dk + kPadF32;
  SmemCarve sm{smem_tc};
  bf16_t* qs = sm.take<bf16_t>(kTcRows * ldq);
  bf16_t* gs = sm.take<bf16_t>(kTcRows * ldv);    // dO rows
  bf16_t* ks = sm.take<bf16_t>(kTcTile * ldq);
  bf16_t* vs = sm.take<bf16_t>(kTcTile * ldv);
  float* ss = sm.take<float>(kTcRows * kLdS);     // scores, then each warp's bf16 dS; with dps the staging area
  float* dps = sm.take<float>(kTcRows * kLdS);    // dP
  float* lse_s = sm.take<float>(kTcRows);
  float* del_s = sm.take<float>(kTcRows);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = 16 * warp;
  const int r = wr + (lane >> 1), half = lane & 1;
  bf16_t* dss = reinterpret_cast<bf16_t*>(ss + wr * kLdS);  // the warp's dS: 16 rows of pitch kLdP
  const int64_t i0 = int64_t(blockIdx.x) * kTcRows;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    tc_load(qs, ldq, q + qr.base(bh, heads), qr.t, i0, kTcRows, tq, dk);
    tc_load(gs, ldv, dout + orr.base(bh, heads), orr.t, i0, kTcRows, tq, dv);
    for (int e = threadIdx.x; e < kTcRows; e += blockDim.x) {
      lse_s[e] = i0 + e < tq ? lse[bh * tq + i0 + e] : 0.0f;
      del_s[e] = i0 + e < tq ? delta[bh * tq + i0 + e] : 0.0f;
    }
    FragC acc[kTcMaxDim / 16];
    for (int c = 0; c < dk / 16; c++) wm::fill_fragment(acc[c], 0.0f);
    for (int64_t t0 = 0; t0 < tk; t0 += kTcTile) {
      __syncthreads();
      tc_load(ks, ldq, k + kr.base(bh, heads), kr.t, t0, kTcTile, tk, dk);
      tc_load(vs, ldv, v + vr.base(bh, heads), vr.t, t0, kTcTile, tk, dv);
      __syncthreads();
      for (int c = 0; c < kTcTile / 16; c++) {
        tc_product_nt(ss + wr * kLdS + 16 * c, kLdS, qs + wr * ldq, ldq, ks + 16 * c * ldq, ldq, dk);
        tc_product_nt(dps + wr * kLdS + 16 * c, kLdS, gs + wr * ldv, ldv, vs + 16 * c * ldv, ldv, dv);
      }
      __syncwarp();
      float dsv[16];
      for (int j = 0; j < 16; j++) {
        const int col = 16 * half + j;
        const float p = t0 + col < tk ? expf(ss[r * kLdS + col] * scale - lse_s[r]) : 0.0f;
        dsv[j] = p * (dps[r * kLdS + col] - del_s[r]);
      }
      __syncwarp();  // every lane has read its scores: dS may overwrite them
      for (int j = 0; j < 16; j++) dss[(r - wr) * kLdP + 16 * half + j] = float_to_bf16(dsv[j]);
      __syncwarp();
      for (int c = 0; c < dk / 16; c++) tc_accumulate_nn(acc[c], dss, kLdP, ks + 16 * c, ldq);
    }
    __syncthreads();  // every warp is done with ss and dps: they become the staging area
    float* stage = ss;  // [64][dk + 4] f32 fits in ss + dps (dk <= 64)
    for (int c = 0; c < dk / 16; c++)
      wm::store_matrix_sync(stage + wr * ldst + 16 * c, acc[c], unsigned(ldst), wm::mem_row_major);
    __syncwarp();
    const int64_t qbase = qr.base(bh, heads);
    for (int e = lane; e < 16 * dk; e += 32) {
      const int rr = wr + e / dk, c = e % dk;
      if (i0 + rr < tq) dq[qbase + (i0 + rr) * qr.t + c] = float_to_bf16(stage[rr * ldst + c] * scale);
    }
    __syncthreads();
  }
}

// dK = scale dS^T Q and dV = P^T dO: a block owns 64 key rows and walks the queries; both stay in fragments.
__global__ void __launch_bounds__(kTcWarps * 32)
    attention_dkdv_tc_kernel(bf16_t* __restrict__ dkey, bf16_t* __restrict__ dval, const bf16_t* __restrict__ q,
                             const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, const bf16_t* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ delta, int64_t bh_count,
                             int64_t heads, int64_t tq, int64_t tk, int dk, int dv, Rows qr, Rows kr, Rows vr, Rows orr,
                             float scale) {
  extern __shared__ __align__(128) unsigned char smem_tc[];
  const int ldq = dk + kPadBf16, ldv = dv + kPadBf16;
  SmemCarve sm{smem_tc};
  bf16_t* ks = sm.take<bf16_t>(kTcRows * ldq);
  bf16_t* vs = sm.take<bf16_t>(kTcRows * ldv);
  bf16_t* qs = sm.take<bf16_t>(kTcTile * ldq);
  bf16_t* gs = sm.take<bf16_t>(kTcTile * ldv);     // dO rows
  float* lse_s = sm.take<float>(kTcTile);
  float* del_s = sm.take<float>(kTcTile);
  float* sts = sm.take<float>(kTcRows * kLdS);   // S^T, then each warp's bf16 P^T; with dpts the staging area
  float* dpts = sm.take<float>(kTcRows * kLdS);  // dP^T, then each warp's bf16 dS^T
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = 16 * warp;
  const int r = wr + (lane >> 1), half = lane & 1;
  bf16_t* pt = reinterpret_cast<bf16_t*>(sts + wr * kLdS);    // 16 rows of pitch kLdP
  bf16_t* dst = reinterpret_cast<bf16_t*>(dpts + wr * kLdS);  // 16 rows of pitch kLdP
  const int64_t j0 = int64_t(blockIdx.x) * kTcRows;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    tc_load(ks, ldq, k + kr.base(bh, heads), kr.t, j0, kTcRows, tk, dk);
    tc_load(vs, ldv, v + vr.base(bh, heads), vr.t, j0, kTcRows, tk, dv);
    FragC acc_k[kTcMaxDim / 16], acc_v[kTcMaxDim / 16];
    for (int c = 0; c < dk / 16; c++) wm::fill_fragment(acc_k[c], 0.0f);
    for (int c = 0; c < dv / 16; c++) wm::fill_fragment(acc_v[c], 0.0f);
    for (int64_t i0 = 0; i0 < tq; i0 += kTcTile) {
      __syncthreads();
      tc_load(qs, ldq, q + qr.base(bh, heads), qr.t, i0, kTcTile, tq, dk);
      tc_load(gs, ldv, dout + orr.base(bh, heads), orr.t, i0, kTcTile, tq, dv);
      for (int e = threadIdx.x; e < kTcTile; e += blockDim.x) {
        lse_s[e] = i0 + e < tq ? lse[bh * tq + i0 + e] : 0.0f;
        del_s[e] = i0 + e < tq ? delta[bh * tq + i0 + e] : 0.0f;
      }
      __syncthreads();
      for (int c = 0; c < kTcTile / 16; c++) {
        tc_product_nt(sts + wr * kLdS + 16 * c, kLdS, ks + wr * ldq, ldq, qs + 16 * c * ldq, ldq, dk);
        tc_product_nt(dpts + wr * kLdS + 16 * c, kLdS, vs + wr * ldv, ldv, gs + 16 * c * ldv, ldv, dv);
      }
      __syncwarp();
      float pv[16], dsv[16];
      for (int j = 0; j < 16; j++) {
        const int col = 16 * half + j;  // query i0 + col
        pv[j] = i0 + col < tq ? expf(sts[r * kLdS + col] * scale - lse_s[col]) : 0.0f;
        dsv[j] = pv[j] * (dpts[r * kLdS + col] - del_s[col]);
      }
      __syncwarp();  // every lane has read its S^T and dP^T before the warp's rows are overwritten with bf16
      for (int j = 0; j < 16; j++) {
        const int col = 16 * half + j;
        pt[(r - wr) * kLdP + col] = float_to_bf16(pv[j]);
        dst[(r - wr) * kLdP + col] = float_to_bf16(dsv[j]);
      }
      __syncwarp();
      for (int c = 0; c < dv / 16; c++) tc_accumulate_nn(acc_v[c], pt, kLdP, gs + 16 * c, ldv);
      for (int c = 0; c < dk / 16; c++) tc_accumulate_nn(acc_k[c], dst, kLdP, qs + 16 * c, ldq);
    }
    __syncthreads();  // sts and dpts become the staging area
    float* stage = sts;  // [64][dims + 4] f32 fits in sts + dpts (dims <= 64)
    const int ldsv = dv + kPadF32, ldsk = dk + kPadF32;
    const int64_t vbase = vr.base(bh, heads), kbase = kr.base(bh, heads);
    for (int c = 0; c < dv / 16; c++)
      wm::store_matrix_sync(stage + wr * ldsv + 16 * c, acc_v[c], unsigned(ldsv), wm::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 16 * dv; e += 32) {
      const int rr = wr + e / dv, c = e % dv;
      if (j0 + rr < tk) dval[vbase + (j0 + rr) * vr.t + c] = float_to_bf16(stage[rr * ldsv + c]);
    }
    __syncthreads();  // every warp has read its dV rows before the staging area takes dK (row pitches differ)
    for (int c = 0; c < dk / 16; c++)
      wm::store_matrix_sync(stage + wr * ldsk + 16 * c, acc_k[c], unsigned(ldsk), wm::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 16 * dk; e += 32) {
      const int rr = wr + e / dk, c = e % dk;
      if (j0 + rr < tk) dkey[kbase + (j0 + rr) * kr.t + c] = float_to_bf16(stage[rr * ldsk + c] * scale);
    }
    __syncthreads();
  }
}

size_t tc_forward_smem(int dk, int dv) {
  const size_t ldq = size_t(dk + kPadBf16), ldv = size_t(dv + kPadBf16), ldo = size_t(dv + kPadF32);
  return round128(kTcRows * ldq * 2) + round128(kTcTile * ldq * 2) + round128(kTcTile * ldv * 2) +
         round128(size_t(kTcRows * kLdS) * 4) + round128(kTcRows * ldo * 4) + 2 * round128(size_t(kTcRows) * 4);
}
size_t tc_dq_smem(int dk, int dv) {
  const size_t ldq = size_t(dk + kPadBf16), ldv = size_t(dv + kPadBf16);
  return round128(kTcRows * ldq * 2) + round128(kTcRows * ldv * 2) + round128(kTcTile * ldq * 2) +
         round128(kTcTile * ldv * 2) + 2 * round128(size_t(kTcRows * kLdS) * 4) + 2 * round128(size_t(kTcRows) * 4);
}
size_t tc_dkdv_smem(int dk, int dv) {
  const size_t ldq = size_t(dk + kPadBf16), ldv = size_t(dv + kPadBf16);
  return round128(kTcRows * ldq * 2) + round128(kTcRows * ldv * 2) + round128(kTcTile * ldq * 2) +
         round128(kTcTile * ldv * 2) + 2 * round128(size_t(kTcTile) * 4) + 2 * round128(size_t(kTcRows * kLdS) * 4);
}
// The staging areas (a warp's 16 rows x 32 of f32 hold its 16 x (32 + 8) bf16; 64 x (64 + 4) f32 fit in two score
// tiles) and the 48 KiB limit, for the largest dims.
static_assert(16 * kLdS * 4 >= 16 * kLdP * 2, "a warp's bf16 P must fit in its rows of f32 scores");
static_assert(2 * kTcRows * kLdS >= kTcRows * (kTcMaxDim + kPadF32), "the staging area must fit in two score tiles");

constexpr size_t kTcSmemLimit = 48 * 1024;  // what a block gets without cudaFuncSetAttribute

dim3 tc_grid(int64_t rows, int64_t bh) {
  return dim3(unsigned((rows + kTcRows - 1) / kTcRows), unsigned(std::min<int64_t>(bh, 65535)));
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
    zero_rows(a.out, a.dtype, rows_of(a.o_rows()), bh, a.heads, a.tq, a.v_dim);
    return;
  }
  ENG_CHECK((a.tq + kAttnWarps - 1) / kAttnWarps <= int64_t(INT32_MAX), "attention_forward: too many query rows");
  const bool cudnn = cudnn_attention_forward(a);
  if (!cudnn) own_attention_forward(a);
  count_attention_call(cudnn, true);
}

// Shapes checked and non-empty (attention_forward).
void CudaBackend::own_attention_forward(const AttentionArgs& a) {
  const int64_t bh = a.batch * a.heads;
  if (tc_attention_ok(a)) {
    const int dk = int(a.head_dim), dv = int(a.v_dim);
    ENG_CHECK(tc_forward_smem(dk, dv) <= kTcSmemLimit, "internal: attention forward needs {} bytes of shared memory",
              tc_forward_smem(dk, dv));
    attention_forward_tc_kernel<<<tc_grid(a.tq, bh), kTcWarps * 32, tc_forward_smem(dk, dv)>>>(
        static_cast<const bf16_t*>(a.q), static_cast<const bf16_t*>(a.k), static_cast<const bf16_t*>(a.v),
        static_cast<bf16_t*>(a.out), static_cast<float*>(a.lse), bh, a.heads, a.tq, a.tk, dk, dv,
        rows_of(a.q_rows()), rows_of(a.k_rows()), rows_of(a.v_rows()), rows_of(a.o_rows()), float(a.scale));
    CUDA_CHECK_LAUNCH("attention_forward (tensor cores)");
    return;
  }
  dispatch_float(a.dtype, "attention_forward", [&](auto t) {
    using T = decltype(t);
    using A = calc_t<T>;
    const size_t smem = size_t(kTile * (a.head_dim + 1) + kTile * (a.v_dim + 1) + kAttnWarps * a.head_dim) * sizeof(A);
    attention_forward_kernel<T><<<attention_grid(a.tq, bh), kAttnWarps * 32, smem>>>(
        static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.v), static_cast<T*>(a.out),
        static_cast<A*>(a.lse), bh, a.heads, a.tq, a.tk, a.head_dim, a.v_dim, rows_of(a.q_rows()),
        rows_of(a.k_rows()), rows_of(a.v_rows()), rows_of(a.o_rows()), A(a.scale));
  });
  CUDA_CHECK_LAUNCH("attention_forward");
}

void CudaBackend::attention_backward(const AttentionArgs& a) {
  OpScope scope(*this, "cuda.attention_backward");
  check_attention(a, "attention_backward");
  const int64_t bh = a.batch * a.heads;
  if (bh == 0) return;
  if (a.tq == 0 || a.tk == 0) {  // no scores: every gradient is zero
    zero_rows(a.dq, a.dtype, rows_of(a.q_rows()), bh, a.heads, a.tq, a.head_dim);
    zero_rows(a.dk, a.dtype, rows_of(a.k_rows()), bh, a.heads, a.tk, a.head_dim);
    zero_rows(a.dv, a.dtype, rows_of(a.v_rows()), bh, a.heads, a.tk, a.v_dim);
    return;
  }
  ENG_CHECK(a.dq && a.dk && a.dv, "attention_backward: dq, dk and dv must all be set");
  const bool cudnn = cudnn_attention_backward(a);
  if (!cudnn) own_attention_backward(a);
  count_attention_call(cudnn, false);
}

// Shapes checked and non-empty (attention_backward).
void CudaBackend::own_attention_backward(const AttentionArgs& a) {
  const int64_t bh = a.batch * a.heads;
  dispatch_float(a.dtype, "attention_backward", [&](auto t) {
    using T = decltype(t);
    using A = calc_t<T>;
    const Rows qr = rows_of(a.q_rows()), kr = rows_of(a.k_rows()), vr = rows_of(a.v_rows()), orr = rows_of(a.o_rows());
    DeviceBuffer delta(device(), size_t(bh * a.tq) * sizeof(A));
    attention_delta_kernel<T><<<blocks_for(bh * a.tq, kThreads / 32), kThreads>>>(
        delta.as<A>(), static_cast<const T*>(a.dout), static_cast<const T*>(a.out), bh * a.tq, a.heads, a.tq, a.v_dim, orr);
    CUDA_CHECK_LAUNCH("attention_backward (delta)");
    if constexpr (std::is_same<T, bf16_t>::value) {
      if (tc_attention_ok(a)) {
        const int dk = int(a.head_dim), dv = int(a.v_dim);
        ENG_CHECK(tc_dq_smem(dk, dv) <= kTcSmemLimit && tc_dkdv_smem(dk, dv) <= kTcSmemLimit,
                  "internal: attention backward needs {} / {} bytes of shared memory", tc_dq_smem(dk, dv),
                  tc_dkdv_smem(dk, dv));
        attention_dq_tc_kernel<<<tc_grid(a.tq, bh), kTcWarps * 32, tc_dq_smem(dk, dv)>>>(
            static_cast<bf16_t*>(a.dq), static_cast<const bf16_t*>(a.q), static_cast<const bf16_t*>(a.k),
            static_cast<const bf16_t*>(a.v), static_cast<const bf16_t*>(a.dout), static_cast<const float*>(a.lse),
            delta.as<float>(), bh, a.heads, a.tq, a.tk, dk, dv, qr, kr, vr, orr, float(a.scale));
        CUDA_CHECK_LAUNCH("attention_backward (dq, tensor cores)");
        attention_dkdv_tc_kernel<<<tc_grid(a.tk, bh), kTcWarps * 32, tc_dkdv_smem(dk, dv)>>>(
            static_cast<bf16_t*>(a.dk), static_cast<bf16_t*>(a.dv), static_cast<const bf16_t*>(a.q),
            static_cast<const bf16_t*>(a.k), static_cast<const bf16_t*>(a.v), static_cast<const bf16_t*>(a.dout),
            static_cast<const float*>(a.lse), delta.as<float>(), bh, a.heads, a.tq, a.tk, dk, dv, qr, kr, vr, orr,
            float(a.scale));
        CUDA_CHECK_LAUNCH("attention_backward (dk, dv, tensor cores)");
        return;
      }
    }
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
