// moce/cluster/parallel.h: the parallel loop of the clustering code, on the engine's CPU pool.
#pragma once
#include <algorithm>
#include <cstdint>

#include "engine/parallel.h"

namespace moce::cluster {

// Runs body(i) for i in [begin, end) in pieces of `grain` indices on the engine's CPU pool, whose caller thread works
// "help first" (engine/parallel.h): on a busy machine no piece waits for a descheduled helper, which an
// OpenMP team barrier does (5x slower here under load). Pieces never depend on the thread count.
template <typename F> void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& body) {
  if (end <= begin) return;
  const int64_t pieces = (end - begin + grain - 1) / grain;
  eng::parallel_pieces(pieces, [&](int64_t p) {
    const int64_t b = begin + p * grain, e = std::min(end, b + grain);
    for (int64_t i = b; i < e; i++) body(i);
  });
}

}  // namespace moce::cluster
