// cpu_pool.cpp: the help-first thread pool of cpu_pool.h.
//
// One job at a time. Its pieces are handed out under a mutex (a few tens of nanoseconds per piece; pieces are
// microseconds to milliseconds of work). A helper registers with a job and claims its first piece in the same
// critical section, so "registered" means "holding a piece": when the caller runs out of pieces it waits only
// for helpers that are in the middle of one, never for a helper that has not woken up yet. Helpers spin for a
// short while after a job (the next op usually follows within microseconds), then sleep on a condition variable.
#include "engine/backends/cpu/cpu_pool.h"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ENG_CPU_RELAX() _mm_pause()
#else
#define ENG_CPU_RELAX() ((void)0)
#endif

namespace eng::cpu {

namespace {

thread_local bool t_in_piece = false;

struct Job {
  void (*fn)(void*, int64_t) = nullptr;
  void* ctx = nullptr;
  int64_t pieces = 0;
  int64_t next = 0;        // next unclaimed piece (under the pool mutex)
  int max_helpers = 0;     // helpers allowed to join (threads - 1)
  int joined = 0;          // helpers that joined (under the mutex)
  std::atomic<int> running{0};  // helpers holding a piece (changed under the mutex; read without it to spin)
  std::exception_ptr error;  // first exception (under the mutex)
};

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: helpers may outlive static destruction
    return *pool;
  }

  void run(int64_t pieces, void (*fn)(void*, int64_t), void* ctx, int threads) {
    Job job;
    job.fn = fn;
    job.ctx = ctx;
    job.pieces = pieces;
    job.max_helpers = threads - 1;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (job_) {  // another thread's job is running: do this one alone
        lock.unlock();
        run_serial(job);
        return;
      }
      grow_locked(threads - 1);
      job_ = &job;
      epoch_.fetch_add(1, std::memory_order_release);
    }
    if (sleeping_.load(std::memory_order_acquire) > 0) wake_.notify_all();
    work(job);  // the caller takes pieces like any helper
    std::unique_lock<std::mutex> lock(mu_);
    job_ = nullptr;  // no helper joins from now on
    // Wait only for helpers that hold a piece. Spin briefly (pieces are short), then block.
    if (job.running.load() > 0) {
      lock.unlock();
      for (int spin = 0; spin < 4000 && job.running.load(std::memory_order_acquire) > 0; spin++) ENG_CPU_RELAX();
      lock.lock();
      done_.wait(lock, [&] { return job.running.load() == 0; });
    }
    std::exception_ptr error = job.error;
    lock.unlock();
    if (error) std::rethrow_exception(error);
  }

 private:
  Pool() = default;

 public:
  // All pieces on the calling thread, in order (marked as inside a piece, like the parallel path).
  static void run_serial(Job& job) {
    const bool was = t_in_piece;
    t_in_piece = true;
    try {
      for (int64_t i = 0; i < job.pieces; i++) job.fn(job.ctx, i);
    } catch (...) {
      t_in_piece = was;
      throw;
    }
    t_in_piece = was;
  }

 private:
  // Runs piece `first` (already claimed; -1 for none), then claims and runs pieces until none are left. For a
  // helper, `running` was raised when it joined and claimed `first`.
  void work(Job& job, int64_t first = -1, bool helper = false) {
    t_in_piece = true;
    std::unique_lock<std::mutex> lock(mu_);
    for (int64_t claimed = first;; claimed = -1) {
      if (claimed < 0 && job.next >= job.pieces) break;
      const int64_t i = claimed >= 0 ? claimed : job.next++;
      lock.unlock();
      try {
        job.fn(job.ctx, i);
      } catch (...) {
        lock.lock();
        if (!job.error) job.error = std::current_exception();
        job.next = job.pieces;  // skip what has not started
        continue;
      }
      lock.lock();
    }
    if (helper && --job.running == 0) done_.notify_all();
    lock.unlock();
    t_in_piece = false;
  }

  void grow_locked(int helpers) {
    while (int(threads_.size()) < helpers) {
      threads_.emplace_back([this] { helper_loop(); });
      threads_.back().detach();
    }
  }

  void helper_loop() {
    uint64_t seen = epoch_.load(std::memory_order_acquire);
    for (;;) {
      // Wait for a new job: spin about 200 microseconds (ops follow each other within microseconds), then sleep.
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      int n = 0;
      while (epoch_.load(std::memory_order_acquire) == seen) {
        ENG_CPU_RELAX();
        if (++n % 64 == 0 && std::chrono::steady_clock::now() > spin_until) {
          std::unique_lock<std::mutex> lock(mu_);
          sleeping_.fetch_add(1, std::memory_order_acq_rel);
          wake_.wait(lock, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
          sleeping_.fetch_sub(1, std::memory_order_acq_rel);
          break;
        }
      }
      std::unique_lock<std::mutex> lock(mu_);
      seen = epoch_.load(std::memory_order_acquire);
      Job* job = job_;
      // Join only a live job with pieces left and room for one more helper; joining means holding a piece, so the
      // caller never waits for a helper that has nothing to finish.
      if (!job || job->next >= job->pieces || job->joined >= job->max_helpers) continue;
      job->joined++;
      job->running++;
      const int64_t first = job->next++;
      lock.unlock();
      work(*job, first, true);
    }
  }

  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> epoch_{0};
  std::atomic<int> sleeping_{0};
  Job* job_ = nullptr;
  std::vector<std::thread> threads_;
};

}  // namespace

int max_threads() { return omp_get_max_threads(); }

bool in_parallel_region() { return t_in_piece; }

void run_pieces(int64_t pieces, void (*fn)(void*, int64_t), void* ctx, int threads) {
  if (pieces <= 0) return;
  if (threads <= 0) threads = max_threads();
  if (pieces < threads) threads = int(pieces);
  if (threads <= 1 || t_in_piece || omp_in_parallel()) {
    Job job;
    job.fn = fn;
    job.ctx = ctx;
    job.pieces = pieces;
    Pool::run_serial(job);
    return;
  }
  Pool::get().run(pieces, fn, ctx, threads);
}

}  // namespace eng::cpu
