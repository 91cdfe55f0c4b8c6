// engine/parallel.cpp: parallel_pieces on the CPU backend's pool.
#include "engine/parallel.h"

#include "engine/backends/cpu/cpu_pool.h"

namespace eng {

void parallel_pieces(int64_t pieces, void (*fn)(void*, int64_t), void* ctx) { cpu::run_pieces(pieces, fn, ctx); }

}  // namespace eng
