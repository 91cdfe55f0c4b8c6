// rng.h: the engine's random numbers. Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy
// as 1, 2, 3", SC 2011), a counter-based generator: the numbers are a pure function of (key, counter),
// so any element of any fill can be computed on its own, on any device and any thread count.
//
// Mapping used by every fill in the engine (CPU and CUDA alike), for element i (row-major logical
// index) of a fill drawn with (seed, stream, offset):
//   c       = offset + i                        (64-bit, wraps)
//   counter = { lo32(c), hi32(c), lo32(stream), hi32(stream) }
//   key     = { lo32(seed), hi32(seed) }
//   r[0..3] = philox4x32_10(counter, key)
// Each element uses exactly one counter (all four output words are available to it):
//   uniform f32 in [0,1):  (r[0] >> 8) * 2^-24                               (24 bits of r[0])
//   uniform f64 in [0,1):  (((uint64)r[1] << 32 | r[0]) >> 11) * 2^-53        (top 53 bits of r[1]:r[0])
//   uniform in [lo,hi):    fma(hi - lo, u, lo) in double, then rounded to the dtype; for f32 a result
//                          that rounds up to hi is replaced by the largest float below hi
//   normal (any dtype):    Box–Muller in double, cosine branch only:
//                          u1 = 1 - u53(r[0], r[1])  in (0, 1]
//                          u2 =     u53(r[2], r[3])  in [0, 1)
//                          z  = sqrt(-2 log u1) * cos(2 pi u2);  value = fma(std, z, mean), then rounded
// The uniform paths are exact integer/IEEE arithmetic (the explicit fma is correctly rounded on every
// device), so they are bitwise identical on CPU and CUDA. The normal path goes through log/cos, whose
// last double bit may differ between libm and CUDA's libdevice; after rounding to f32 they agree in
// practice, but bitwise equality across devices is promised only for uniform fills.
//
// A Generator holds (seed, stream, offset) on the host; every draw advances offset by the number of
// counters it used (= numel), so a saved state reproduces the rest of the sequence exactly.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/host_device.h"

namespace eng {

struct Philox4x32 {
  uint32_t v[4];
};

// ---- Philox4x32-10 core -------------------------------------------------------------------------
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key schedule (golden ratio, sqrt(3)-1)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

ENG_HOST_DEVICE inline void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

ENG_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; round++) {
    if (round > 0) {  // the key is bumped between rounds, not before the first
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxM0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kPhiloxM1, ctr.v[2], hi1, lo1);
    Philox4x32 out;
    out.v[0] = hi1 ^ ctr.v[1] ^ k0;
    out.v[1] = lo1;
    out.v[2] = hi0 ^ ctr.v[3] ^ k1;
    out.v[3] = lo0;
    ctr = out;
  }
  return ctr;
}

// The four words for counter index c of (seed, stream), per the mapping above.
ENG_HOST_DEVICE inline Philox4x32 philox_block(uint64_t seed, uint64_t stream, uint64_t c) {
  Philox4x32 ctr;
  ctr.v[0] = uint32_t(c);
  ctr.v[1] = uint32_t(c >> 32);
  ctr.v[2] = uint32_t(stream);
  ctr.v[3] = uint32_t(stream >> 32);
  return philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
}

// ---- conversions -----------------------------------------------------------------------------------
// [0,1) from the top 24 bits of one word: exact in f32.
ENG_HOST_DEVICE inline float philox_u24(uint32_t w) { return float(w >> 8) * (1.0f / 16777216.0f); }
// [0,1) from the top 53 bits of hi:lo: exact in f64.
ENG_HOST_DEVICE inline double philox_u53(uint32_t lo, uint32_t hi) {
  uint64_t bits = ((uint64_t(hi) << 32) | uint64_t(lo)) >> 11;
  return double(bits) * (1.0 / 9007199254740992.0);
}

// Element c of a uniform [lo, hi) fill, for an f32 destination.
ENG_HOST_DEVICE inline float philox_uniform_f32(uint64_t seed, uint64_t stream, uint64_t c, double lo, double hi) {
  Philox4x32 r = philox_block(seed, stream, c);
  float x = float(::fma(hi - lo, double(philox_u24(r.v[0])), lo));
  // Rounding to f32 can land on hi itself; keep the interval half-open.
  if (hi > lo && double(x) >= hi) x = ::nextafterf(float(hi), float(lo));
  return x;
}
// Element c of a uniform [lo, hi) fill, for an f64 destination.
ENG_HOST_DEVICE inline double philox_uniform_f64(uint64_t seed, uint64_t stream, uint64_t c, double lo, double hi) {
  Philox4x32 r = philox_block(seed, stream, c);
  double x = ::fma(hi - lo, philox_u53(r.v[0], r.v[1]), lo);
  if (hi > lo && x >= hi) x = ::nextafter(hi, lo);
  return x;
}
// Element c of a normal(mean, std) fill, in double (round to the destination dtype afterwards).
ENG_HOST_DEVICE inline double philox_normal_f64(uint64_t seed, uint64_t stream, uint64_t c, double mean, double std) {
  Philox4x32 r = philox_block(seed, stream, c);
  double u1 = 1.0 - philox_u53(r.v[0], r.v[1]);  // (0, 1]: log never sees 0
  double u2 = philox_u53(r.v[2], r.v[3]);
  double radius = ::sqrt(-2.0 * ::log(u1));
  double z = radius * ::cos(6.283185307179586476925 * u2);
  return ::fma(std, z, mean);
}

}  // namespace eng

// ---- host side: the Generator ------------------------------------------------------------------------
#include <nlohmann/json_fwd.hpp>

#include "engine/tensor.h"

namespace eng {

// Everything needed to continue a random sequence exactly; saved in checkpoints.
struct RngState {
  uint64_t seed = 0;
  uint64_t stream = 0;
  uint64_t offset = 0;
  bool operator==(const RngState& o) const { return seed == o.seed && stream == o.stream && offset == o.offset; }
  bool operator!=(const RngState& o) const { return !(*this == o); }
};
// JSON form {"seed": .., "stream": .., "offset": ..}; numbers are unsigned 64-bit. from_json also accepts
// decimal strings (for stores that keep only 53-bit numbers) and names the field that is missing or wrong.
void to_json(nlohmann::json& j, const RngState& s);
void from_json(const nlohmann::json& j, RngState& s);

class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t stream = 0, uint64_t offset = 0) : state_{seed, stream, offset} {}
  explicit Generator(const RngState& s) : state_(s) {}

  uint64_t seed() const { return state_.seed; }
  uint64_t stream() const { return state_.stream; }
  uint64_t offset() const { return state_.offset; }
  RngState state() const { return state_; }
  void set_state(const RngState& s) { state_ = s; }

  // Uniform [lo, hi) and normal(mean, std) tensors (F32, F64, or BF16 via an F32 draw), contiguous.
  // Element i uses counter offset + i (see the top of this file); offset advances by numel.
  Tensor uniform(const Shape& shape, double lo = 0.0, double hi = 1.0, DType dtype = DType::F32,
                 Device device = Device::cpu());
  Tensor normal(const Shape& shape, double mean = 0.0, double std = 1.0, DType dtype = DType::F32,
                Device device = Device::cpu());
  // Fills an existing floating tensor in place (any layout), same counters as uniform()/normal().
  void uniform_(const Tensor& t, double lo = 0.0, double hi = 1.0);
  void normal_(const Tensor& t, double mean = 0.0, double std = 1.0);
  // A uniformly random permutation of 0..n-1 as an i64 tensor: argsort of n 64-bit Philox keys
  // (words r[1]:r[0] of counters offset..offset+n-1), ties broken by index. Computed on the host, so
  // the same for any thread count; offset advances by n.
  Tensor permutation(int64_t n, Device device = Device::cpu());
  // 64 random bits from one counter (r[1]:r[0]); offset advances by 1.
  uint64_t next_u64();
  // Reserves `count` counters and returns the first one: for callers that launch their own kernels
  // (e.g. dropout) with (seed(), stream(), returned offset).
  uint64_t advance(uint64_t count) {
    uint64_t first = state_.offset;
    state_.offset += count;
    return first;
  }

 private:
  RngState state_;
};

}  // namespace eng
