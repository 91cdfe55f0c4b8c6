// engine/parallel.h: the engine's CPU parallel loop for code outside engine/ (the seam to the CPU backend's
// help-first pool, engine/backends/cpu/cpu_pool.h, whose rules hold: pieces run once each on whichever thread
// claims them, so pieces fixed by the problem give bitwise identical results for any thread count).
#pragma once
#include <cstdint>
#include <type_traits>

namespace eng {

// Runs fn(ctx, i) for every i in [0, pieces) on the CPU pool (the caller included) and returns when all are done;
// the first exception of a piece is rethrown here.
void parallel_pieces(int64_t pieces, void (*fn)(void*, int64_t), void* ctx);

template <typename F> void parallel_pieces(int64_t pieces, F&& f) {
  using Fn = std::remove_reference_t<F>;
  parallel_pieces(
      pieces, [](void* c, int64_t i) { (*static_cast<Fn*>(c))(i); }, const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace eng
