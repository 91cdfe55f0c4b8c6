// Fake CUB radix sort for the CPU emulation build: a stable sort on the key bits [begin_bit, end_bit), of pairs or of
// keys alone.
#pragma once
#include <numeric>
#include <type_traits>

#include "cuda_runtime.h"

namespace cub {
struct DeviceRadixSort {
  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* kin, K* kout, const V* vin, V* vout, N n,
                               int begin_bit = 0, int end_bit = int(sizeof(K) * 8), cudaStream_t = 0) {
    if (!temp) {
      bytes = 64;
      return cudaSuccess;
    }
    if (bytes < 64) emu::fail("cub: temp storage too small");
    using U = std::make_unsigned_t<K>;
    const int bits = int(sizeof(K) * 8);
    U mask = end_bit >= bits ? ~U(0) : U((U(1) << end_bit) - 1);
    if (begin_bit > 0) mask &= U(~((U(1) << begin_bit) - 1));
    std::vector<int64_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), int64_t(0));
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return (U(kin[a]) & mask) < (U(kin[b]) & mask); });
    std::vector<K> ks(static_cast<size_t>(n));
    std::vector<V> vs(static_cast<size_t>(n));
    for (size_t i = 0; i < idx.size(); i++) {
      ks[i] = kin[idx[i]];
      vs[i] = vin[idx[i]];
    }
    std::copy(ks.begin(), ks.end(), kout);
    std::copy(vs.begin(), vs.end(), vout);
    return cudaSuccess;
  }
  template <typename K, typename N>
  static cudaError_t SortKeys(void* temp, size_t& bytes, const K* kin, K* kout, N n, int begin_bit = 0,
                              int end_bit = int(sizeof(K) * 8), cudaStream_t stream = 0) {
    std::vector<unsigned char> no_values(static_cast<size_t>(n));  // the pair sort with values nobody reads
    return SortPairs(temp, bytes, kin, kout, no_values.data(), no_values.data(), n, begin_bit, end_bit, stream);
  }
};
}  // namespace cub
