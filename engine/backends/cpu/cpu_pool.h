// cpu_pool.h: the CPU backend's parallel runtime: a small pool of helper threads that run the pieces of one job
// together with the calling thread, "help first": the caller takes pieces itself and never waits for a helper
// that has not started. On a busy machine (other processes on the cores) a descheduled helper simply finds no
// work left when it wakes, so a job never stalls for a scheduler time slice the way a fork-join barrier does
// (OpenMP's team barrier waits for every thread; with ~600 parallel regions per training step that turned a
// 1.5 s step into 7 s when another process competed for the two cores).
//
// The number of threads is OpenMP's setting (omp_get_max_threads(): OMP_NUM_THREADS or omp_set_num_threads), so
// existing controls and tests keep working. Pieces are numbered; each runs exactly once, on whichever thread
// claims it, so callers that make pieces independent of the thread count get bitwise identical results with any
// number of threads. Calls from inside a piece, from inside an OpenMP region, or while another thread's job is
// running execute their pieces serially on the calling thread.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

namespace eng::cpu {

// Threads a job may use (the caller included).
int max_threads();

// True on a thread that is running a piece of a job.
bool in_parallel_region();

// Runs fn(ctx, i) for every i in [0, pieces), spread over up to `threads` threads (the caller included; 0 means
// max_threads()), and returns when all are done. The first exception thrown by a piece is rethrown here (pieces
// not yet started are skipped).
void run_pieces(int64_t pieces, void (*fn)(void*, int64_t), void* ctx, int threads = 0);

template <typename F> void run_pieces(int64_t pieces, F&& f, int threads = 0) {
  using Fn = std::remove_reference_t<F>;
  run_pieces(
      pieces, [](void* c, int64_t i) { (*static_cast<Fn*>(c))(i); }, const_cast<void*>(static_cast<const void*>(&f)),
      threads);
}

}  // namespace eng::cpu
