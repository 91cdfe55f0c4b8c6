// cpu_attention.cpp: fused scaled-dot-product attention on the CPU (AttentionArgs in engine/backend.h), forward
// and backward, for the short sequences of a ViT / MAE (17 or 65 tokens): one (batch, head) pair at a time with
// its scores in cache, nothing of size T x T written to memory. Operands may be strided (views of a packed qkv
// projection, an output laid out [batch, tokens, heads, dim]), so the model needs no head split/merge copies.
//
// Forward, per pair:  S = q k^T,  m_i = max_j scale S_ij,  P_ij = exp(scale S_ij - m_i) / l_i  (l_i = row sum),
//   out = P v,  lse_i = m_i + log l_i  (saved for the backward pass).
// Backward, per pair, with P recomputed from lse (no T x T matrix is saved):
//   P_ij = exp(scale S_ij - lse_i),  dP = dout v^T,  D_i = sum_j P_ij dP_ij,  dS = scale P (dP - D)
//   dq = dS k,  dk = dS^T q,  dv = P^T dout.
// f32: the four products of a pair are small GEMMs on the SGEMM's direct kernel (register tiles, no packing, k in
// order), the softmax rows in between are compiled per instruction set (target_clones, as cpu_fused.cpp), without
// fma contraction; query rows go in chunks of kRowChunk so scratch stays small for long sequences. f64 (gradient
// checks) uses plain loops. Row sums of the softmax are f64.
// Pairs run in parallel, one pair per thread from start to end; the arithmetic of a pair does not depend on the
// thread, so results are bitwise identical for any OMP_NUM_THREADS.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cpu/cpu_pool.h"
#include "engine/backends/cpu/gemm_kernels.h"
#include "engine/error.h"
#include "engine/fast_math_f32.h"
#include "engine/backends/cpu/cpu_clones.h"

namespace eng {

namespace {

constexpr int64_t kMaxHeadDim = 256;  // one pair's k and v stay in L2
constexpr int64_t kRowChunk = 128;    // query rows per chunk of scores

// One pair's operands: pointers to token 0 and the element stride between tokens (the head dim is contiguous).
template <typename T> struct PairView {
  const T *q, *k, *v, *dout;
  T *out, *dq, *dk, *dv;
  int64_t ldq, ldk, ldv, ldo;
  T* lse;
};

// Per-thread scratch that only grows.
template <typename T> T* scratch(size_t n) {
  static thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---------------------------------------------------------------- f32

// Rows of scores s (rows x tk) become softmax(scale s); lse_i = m_i + log l_i.
ENG_CLONES void softmax_rows_f32(float* s, float* lse, int64_t rows, int64_t tk, float scale) {
  for (int64_t i = 0; i < rows; i++) {
    float* __restrict p = s + i * tk;
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < tk; j++) m = std::max(m, scale * p[j]);
    if (std::isinf(m) && m < 0) m = 0.0f;  // a row of -inf gives NaN like the definition, not a crash
#pragma omp simd
    for (int64_t j = 0; j < tk; j++) p[j] = exp_f32(scale * p[j] - m);
    double l = 0;
#pragma omp simd reduction(+ : l)
    for (int64_t j = 0; j < tk; j++) l += double(p[j]);
    const float inv = float(1.0 / l);
#pragma omp simd
    for (int64_t j = 0; j < tk; j++) p[j] *= inv;
    lse[i] = m + float(std::log(l));
  }
}

// s (scores) becomes P = exp(scale s - lse); dp becomes dS = scale P (dp - sum_j P dp).
ENG_CLONES void softmax_backward_rows_f32(float* s, float* dp, const float* lse, int64_t rows, int64_t tk, float scale) {
  for (int64_t i = 0; i < rows; i++) {
    float* __restrict p = s + i * tk;
    float* __restrict g = dp + i * tk;
    const float li = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < tk; j++) p[j] = exp_f32(scale * p[j] - li);
    double di = 0;
#pragma omp simd reduction(+ : di)
    for (int64_t j = 0; j < tk; j++) di += double(p[j]) * double(g[j]);
    const float dit = float(di);
#pragma omp simd
    for (int64_t j = 0; j < tk; j++) g[j] = scale * (p[j] * (g[j] - dit));
  }
}

void pair_forward(const PairView<float>& a, int64_t tq, int64_t tk, int64_t dk, int64_t dv, float scale) {
  const gemm::SgemmKernel& K = gemm::sgemm_active_kernel();
  float* s = scratch<float>(size_t(std::min(tq, kRowChunk) * tk));
  for (int64_t i0 = 0; i0 < tq; i0 += kRowChunk) {
    const int64_t rows = std::min(kRowChunk, tq - i0);
    K.small(false, true, rows, tk, dk, 1.0f, a.q + i0 * a.ldq, a.ldq, a.k, a.ldk, 0.0f, s, tk);       // s = q k^T
    softmax_rows_f32(s, a.lse + i0, rows, tk, scale);                                                 // s = P
    K.small(false, false, rows, dv, tk, 1.0f, s, tk, a.v, a.ldv, 0.0f, a.out + i0 * a.ldo, a.ldo);  // out = P v
  }
}

void pair_backward(const PairView<float>& a, int64_t tq, int64_t tk, int64_t dk, int64_t dv, float scale) {
  const gemm::SgemmKernel& K = gemm::sgemm_active_kernel();
  const int64_t chunk = std::min(tq, kRowChunk);
  float* s = scratch<float>(size_t(2 * chunk * tk));
  float* dp = s + chunk * tk;
  if (tq == 0) {
    for (int64_t j = 0; j < tk; j++) {
      std::fill(a.dk + j * a.ldk, a.dk + j * a.ldk + dk, 0.0f);
      std::fill(a.dv + j * a.ldv, a.dv + j * a.ldv + dv, 0.0f);
    }
  }
  for (int64_t i0 = 0; i0 < tq; i0 += kRowChunk) {
    const int64_t rows = std::min(kRowChunk, tq - i0);
    const float* qc = a.q + i0 * a.ldq;
    const float* gc = a.dout + i0 * a.ldo;
    const float beta = i0 == 0 ? 0.0f : 1.0f;  // dk, dv add up over the chunks, in chunk order
    K.small(false, true, rows, tk, dk, 1.0f, qc, a.ldq, a.k, a.ldk, 0.0f, s, tk);                 // s = q k^T
    K.small(false, true, rows, tk, dv, 1.0f, gc, a.ldo, a.v, a.ldv, 0.0f, dp, tk);                // dp = dout v^T
    softmax_backward_rows_f32(s, dp, a.lse + i0, rows, tk, scale);                              // s = P, dp = dS
    K.small(false, false, rows, dk, tk, 1.0f, dp, tk, a.k, a.ldk, 0.0f, a.dq + i0 * a.ldq, a.ldq);  // dq = dS k
    K.small(true, false, tk, dk, rows, 1.0f, dp, tk, qc, a.ldq, beta, a.dk, a.ldk);              // dk += dS^T q
    K.small(true, false, tk, dv, rows, 1.0f, s, tk, gc, a.ldo, beta, a.dv, a.ldv);               // dv += P^T dout
  }
}

// ---------------------------------------------------------------- f64 (plain loops, one query row at a time)

void pair_forward(const PairView<double>& a, int64_t tq, int64_t tk, int64_t dk, int64_t dv, double scale) {
  double* p = scratch<double>(size_t(tk));
  for (int64_t i = 0; i < tq; i++) {
    const double* qi = a.q + i * a.ldq;
    double m = -INFINITY;
    for (int64_t j = 0; j < tk; j++) {
      const double* kj = a.k + j * a.ldk;
      double s = 0;
      for (int64_t d = 0; d < dk; d++) s += qi[d] * kj[d];
      p[j] = scale * s;
      m = std::max(m, p[j]);
    }
    if (std::isinf(m) && m < 0) m = 0.0;
    double l = 0;
    for (int64_t j = 0; j < tk; j++) {
      p[j] = std::exp(p[j] - m);
      l += p[j];
    }
    double* o = a.out + i * a.ldo;
    for (int64_t d = 0; d < dv; d++) o[d] = 0;
    for (int64_t j = 0; j < tk; j++) {
      const double w = p[j] / l;
      const double* vj = a.v + j * a.ldv;
      for (int64_t d = 0; d < dv; d++) o[d] += w * vj[d];
    }
    a.lse[i] = m + std::log(l);
  }
}

void pair_backward(const PairView<double>& a, int64_t tq, int64_t tk, int64_t dk, int64_t dv, double scale) {
  double* p = scratch<double>(size_t(2 * tk));
  double* dp = p + tk;
  for (int64_t j = 0; j < tk; j++) {
    std::fill(a.dk + j * a.ldk, a.dk + j * a.ldk + dk, 0.0);
    std::fill(a.dv + j * a.ldv, a.dv + j * a.ldv + dv, 0.0);
  }
  for (int64_t i = 0; i < tq; i++) {
    const double* qi = a.q + i * a.ldq;
    const double* gi = a.dout + i * a.ldo;
    double di = 0;
    for (int64_t j = 0; j < tk; j++) {
      const double* kj = a.k + j * a.ldk;
      const double* vj = a.v + j * a.ldv;
      double s = 0, g = 0;
      for (int64_t d = 0; d < dk; d++) s += qi[d] * kj[d];
      for (int64_t d = 0; d < dv; d++) g += gi[d] * vj[d];
      p[j] = std::exp(scale * s - a.lse[i]);
      dp[j] = g;
      di += p[j] * g;
    }
    double* dqi = a.dq + i * a.ldq;
    for (int64_t d = 0; d < dk; d++) dqi[d] = 0;
    for (int64_t j = 0; j < tk; j++) {
      const double ds = scale * p[j] * (dp[j] - di);
      const double* kj = a.k + j * a.ldk;
      double* dkj = a.dk + j * a.ldk;
      double* dvj = a.dv + j * a.ldv;
      for (int64_t d = 0; d < dk; d++) {
        dqi[d] += ds * kj[d];
        dkj[d] += ds * qi[d];
      }
      for (int64_t d = 0; d < dv; d++) dvj[d] += p[j] * gi[d];
    }
  }
}

// ---------------------------------------------------------------- drivers

// Runs f(pair) for every (batch, head) pair, in pieces of a few pairs on the pool (cpu_pool.h) when there is enough
// work; the pool rethrows the first error.
template <typename F> void for_each_pair(int64_t pairs, int64_t work_per_pair, F f) {
  const int64_t per_piece = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work_per_pair, 1));
  const int64_t pieces = (pairs + per_piece - 1) / per_piece;
  cpu::run_pieces(pieces, [&](int64_t piece) {
    for (int64_t bh = piece * per_piece; bh < std::min(pairs, (piece + 1) * per_piece); bh++) f(bh);
  });
}

void check_args(const AttentionArgs& a, bool backward) {
  ENG_CHECK(a.batch >= 0 && a.heads >= 0 && a.tq >= 0 && a.tk >= 0, "cpu attention: negative size");
  ENG_CHECK(a.head_dim > 0 && a.head_dim <= kMaxHeadDim && a.v_dim > 0 && a.v_dim <= kMaxHeadDim,
            "cpu attention: head sizes {} / {} outside 1..{}", a.head_dim, a.v_dim, kMaxHeadDim);
  ENG_CHECK(a.tk > 0 || a.tq == 0, "cpu attention: {} queries but no keys", a.tq);
  ENG_CHECK(a.q && a.k && a.v && a.lse, "cpu attention: q, k, v or lse is null");
  if (!backward) ENG_CHECK(a.out, "cpu attention: out is null");
  if (backward) ENG_CHECK(a.dout && a.dq && a.dk && a.dv, "cpu attention backward: a gradient buffer is null");
}

template <typename T> void run_typed(const AttentionArgs& a, bool backward) {
  const RowStrides sq = a.q_rows(), sk = a.k_rows(), sv = a.v_rows(), so = a.o_rows();
  const int64_t heads = a.heads;
  const T scale = T(a.scale);
  const int64_t work = (backward ? 2 : 1) * a.tq * a.tk * (a.head_dim + a.v_dim);
  for_each_pair(a.batch * a.heads, work, [&](int64_t bh) {
    const int64_t b = bh / heads, h = bh % heads;
    const int64_t oq = b * sq.b + h * sq.h, ok = b * sk.b + h * sk.h, ov = b * sv.b + h * sv.h, oo = b * so.b + h * so.h;
    PairView<T> p;
    p.q = static_cast<const T*>(a.q) + oq;
    p.k = static_cast<const T*>(a.k) + ok;
    p.v = static_cast<const T*>(a.v) + ov;
    p.ldq = sq.t;
    p.ldk = sk.t;
    p.ldv = sv.t;
    p.ldo = so.t;
    p.lse = static_cast<T*>(a.lse) + bh * a.tq;
    if (backward) {
      p.dout = static_cast<const T*>(a.dout) + oo;
      p.dq = static_cast<T*>(a.dq) + oq;
      p.dk = static_cast<T*>(a.dk) + ok;
      p.dv = static_cast<T*>(a.dv) + ov;
      pair_backward(p, a.tq, a.tk, a.head_dim, a.v_dim, scale);
    } else {
      p.out = static_cast<T*>(a.out) + oo;
      pair_forward(p, a.tq, a.tk, a.head_dim, a.v_dim, scale);
    }
  });
}

void run(const AttentionArgs& a, bool backward) {
  check_args(a, backward);
  if (a.batch * a.heads == 0 || (!backward && a.tq == 0)) return;
  switch (a.dtype) {
    case DType::F32: run_typed<float>(a, backward); break;
    case DType::F64: run_typed<double>(a, backward); break;
    default: ENG_FAIL("cpu attention: dtype {} not supported (f32, f64)", dtype_name(a.dtype));
  }
}

}  // namespace

bool CpuBackend::has_fused_attention(DType dt, int64_t head_dim, int64_t v_dim) const {
  return (dt == DType::F32 || dt == DType::F64) && head_dim > 0 && head_dim <= kMaxHeadDim && v_dim > 0 &&
         v_dim <= kMaxHeadDim;
}

bool CpuBackend::supports_strided_attention() const { return true; }

void CpuBackend::attention_forward(const AttentionArgs& a) { run(a, false); }

void CpuBackend::attention_backward(const AttentionArgs& a) { run(a, true); }

}  // namespace eng
