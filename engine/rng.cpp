// rng.cpp: the host-side Generator (state, tensor fills, permutations) and its JSON form.
// The per-element Philox math is in engine/rng.h; the fills themselves are backend kernels.
#include "engine/rng.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/ops.h"

namespace eng {

void to_json(nlohmann::json& j, const RngState& s) {
  j = nlohmann::json{{"seed", s.seed}, {"stream", s.stream}, {"offset", s.offset}};
}

static uint64_t u64_field(const nlohmann::json& j, const char* name) {
  ENG_CHECK(j.is_object(), "rng state: expected a JSON object with seed/stream/offset, got {}", j.dump());
  auto it = j.find(name);
  ENG_CHECK(it != j.end(), "rng state: field '{}' is missing in {}", name, j.dump());
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return uint64_t(it->get<int64_t>());
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    size_t used = 0;
    uint64_t v = 0;
    bool ok = !s.empty() && s[0] != '-';
    if (ok) {
      try {
        v = std::stoull(s, &used, 10);
      } catch (const std::exception&) {
        ok = false;
      }
    }
    ENG_CHECK(ok && used == s.size(), "rng state: field '{}' = \"{}\" is not an unsigned 64-bit integer", name, s);
    return v;
  }
  ENG_FAIL("rng state: field '{}' = {} is not an unsigned 64-bit integer", name, it->dump());
}

void from_json(const nlohmann::json& j, RngState& s) {
  s.seed = u64_field(j, "seed");
  s.stream = u64_field(j, "stream");
  s.offset = u64_field(j, "offset");
}

void Generator::uniform_(const Tensor& t, double lo, double hi) {
  ENG_CHECK(is_floating(t.dtype()), "Generator::uniform_: needs a floating tensor, got {}", dtype_name(t.dtype()));
  uint64_t first = advance(uint64_t(t.numel()));
  if (t.dtype() == DType::BF16) {  // draw in f32 with the same counters, then round
    Tensor f = Tensor::empty(t.shape(), DType::F32, t.device());
    backend_for(t.device()).random_uniform(desc_of(f), state_.seed, state_.stream, first, lo, hi);
    Tensor(t).copy_(f);
    return;
  }
  backend_for(t.device()).random_uniform(desc_of(t), state_.seed, state_.stream, first, lo, hi);
}

void Generator::normal_(const Tensor& t, double mean, double std) {
  ENG_CHECK(is_floating(t.dtype()), "Generator::normal_: needs a floating tensor, got {}", dtype_name(t.dtype()));
  uint64_t first = advance(uint64_t(t.numel()));
  if (t.dtype() == DType::BF16) {
    Tensor f = Tensor::empty(t.shape(), DType::F32, t.device());
    backend_for(t.device()).random_normal(desc_of(f), state_.seed, state_.stream, first, mean, std);
    Tensor(t).copy_(f);
    return;
  }
  backend_for(t.device()).random_normal(desc_of(t), state_.seed, state_.stream, first, mean, std);
}

Tensor Generator::uniform(const Shape& shape, double lo, double hi, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  uniform_(t, lo, hi);
  return t;
}

Tensor Generator::normal(const Shape& shape, double mean, double std, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  normal_(t, mean, std);
  return t;
}

uint64_t Generator::next_u64() {
  Philox4x32 r = philox_block(state_.seed, state_.stream, advance(1));
  return (uint64_t(r.v[1]) << 32) | r.v[0];
}

Tensor Generator::permutation(int64_t n, Device device) {
  ENG_CHECK(n >= 0, "Generator::permutation: n must be >= 0, got {}", n);
  uint64_t first = advance(uint64_t(n));
  std::vector<std::pair<uint64_t, int64_t>> keyed(static_cast<size_t>(n));
  const uint64_t seed = state_.seed, stream = state_.stream;
  // Each key depends only on its own counter, so the parallel loop cannot change the result.
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) {
    Philox4x32 r = philox_block(seed, stream, first + uint64_t(i));
    keyed[size_t(i)] = {(uint64_t(r.v[1]) << 32) | r.v[0], i};
  }
  std::sort(keyed.begin(), keyed.end());  // pairs compare key first, then index: a total order
  Tensor out = Tensor::empty({n}, DType::I64, Device::cpu());
  int64_t* o = out.data<int64_t>();
  for (int64_t i = 0; i < n; i++) o[i] = keyed[size_t(i)].second;
  return device.is_cpu() ? out : out.to(device);
}

}  // namespace eng
