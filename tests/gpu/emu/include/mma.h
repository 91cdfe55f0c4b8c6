// mma.h (emulator): the subset of CUDA's warp matrix API (nvcuda::wmma) the attention kernels use, for bf16
// 16 x 16 x 16 products with f32 accumulation. Fragment layouts are opaque on a GPU, so code may only load, store,
// fill and multiply fragments (the kernels never index fragment elements); here every lane holds the whole tile,
// which gives the same results whatever the hardware's layout. The API's rules are checked as a GPU would need
// them: pointers 256-bit aligned, ldm a multiple of 16 bytes. Products of bf16 values are exact in f32; each
// output element is accumulated in k order in f32 (the hardware's order is unspecified; tests allow for that).
// Loads and stores are warp-collective, as on a GPU: each starts with a barrier of the warp's lanes, so that in a
// load - mma - store of the same tile every lane has loaded before any lane stores (here every lane moves the whole
// tile). Data other lanes wrote with plain stores must still be published with __syncwarp() first, as on a GPU.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu_core.h"

struct __nv_bfloat16 {
  uint16_t bits;
};

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has the 16 x 16 x 16 shape only");
  float v[16][16];  // the whole tile, row-major in the matrix's own (row, column) coordinates
};

namespace detail {
inline float bf16_value(__nv_bfloat16 b) {
  const uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void check(const void* p, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail("wmma: pointer not 256-bit aligned");
  if ((size_t(ldm) * elem) % 16 != 0) emu::fail("wmma: ldm is not a multiple of 16 bytes");
}
// Element (r, c) of a matrix stored row- or column-major with leading dimension ldm.
inline size_t at(bool row_major, int r, int c, unsigned ldm) { return row_major ? size_t(r) * ldm + c : size_t(c) * ldm + r; }
}  // namespace detail

template <typename Use, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ldm) {
  emu::warp_barrier();
  detail::check(p, ldm, 2);
  constexpr bool rm = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.v[r][c] = detail::bf16_value(p[detail::at(rm, r, c, ldm)]);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout) {
  emu::warp_barrier();
  detail::check(p, ldm, 4);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.v[r][c] = p[detail::at(layout == mem_row_major, r, c, ldm)];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
  emu::warp_barrier();
  detail::check(p, ldm, 4);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) p[detail::at(layout == mem_row_major, r, c, ldm)] = f.v[r][c];
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  for (auto& row : f.v)
    for (float& x : row) x = value;
}

template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      float acc = c.v[i][j];
      for (int k = 0; k < 16; k++) acc += a.v[i][k] * b.v[k][j];
      out[i][j] = acc;
    }
  std::memcpy(d.v, out, sizeof(out));
}

}  // namespace wmma
}  // namespace nvcuda
