// host_parallel.h: a parallel loop over host memory for code outside engine/ (the clustering's streaming passes over
// a feature bank), on the engine's CPU thread pool, so no caller needs a backend's header or its own OpenMP team.
#pragma once
#include <algorithm>
#include <cstdint>

#include "engine/backends/cpu/cpu_pool.h"

namespace eng {

// Runs body(i) for i in [begin, end) in pieces of `grain` indices. The caller thread works "help first"
// (engine/backends/cpu/cpu_pool.h): on a busy machine no piece waits for a descheduled helper, which an OpenMP team
// barrier does. The pieces do not depend on the thread count, so a body that writes only its own i is deterministic.
template <typename F> void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& body) {
  if (end <= begin) return;
  const int64_t pieces = (end - begin + grain - 1) / grain;
  cpu::run_pieces(pieces, [&](int64_t p) {
    const int64_t b = begin + p * grain, e = std::min(end, b + grain);
    for (int64_t i = b; i < e; i++) body(i);
  });
}

}  // namespace eng
