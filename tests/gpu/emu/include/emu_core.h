// emu_core.h: runs the CUDA backend's kernels on the CPU, for checking them where no GPU exists (make test-gpu-emu).
// Every GPU thread is a fiber (ucontext); __syncthreads and warp shuffles are real barriers, and a shuffle that
// not all 32 lanes reach, or a __syncthreads that some threads skip, aborts with a message instead of hanging.
// Blocks run one after another, so a kernel's __shared__ arrays (static locals here) are the block's shared
// memory. What it cannot see: data races between threads (they run one at a time) and timing.
#pragma once
#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

namespace emu {

struct Ctx {
  dim3 tid, bid, bdim, gdim;
};
extern Ctx* g_cur;

enum State { NotStarted, Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ucontext_t ctx;
  Ctx c;
  State state = NotStarted;
  char* stack = nullptr;
  int linear = 0;
};

struct Launch {
  std::vector<Fiber> fibers;
  std::vector<std::vector<uint64_t>> warp_slots;
  ucontext_t sched;
  const std::function<void()>* body = nullptr;
  int current = -1;
  std::vector<char*> free_stacks;
  std::vector<unsigned char> dyn_smem;
};
extern Launch* g_launch;
extern uint64_t g_switches;

constexpr size_t kStack = 256 * 1024;

inline void yield_to_scheduler() {
  Launch& L = *g_launch;
  Fiber& f = L.fibers[size_t(L.current)];
  g_switches++;
  swapcontext(&f.ctx, &L.sched);
}

inline void trampoline() {
  Launch& L = *g_launch;
  (*L.body)();
  Fiber& f = L.fibers[size_t(L.current)];
  f.state = Done;
  // return to the scheduler via uc_link
}

inline void fail(const char* what) {
  std::fprintf(stderr, "EMU ERROR: %s\n", what);
  std::abort();
}

inline void launch(dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
  if (block.x * block.y * block.z == 0 || block.x * block.y * block.z > 1024) fail("bad block size");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("empty grid");
  if (grid.y > 65535 || grid.z > 65535) fail("grid.y/z over 65535");
  if (smem > 48 * 1024) fail("dynamic shared memory over 48 KiB without opt-in");
  const int nthreads = int(block.x * block.y * block.z);
  Launch L;
  Launch* saved = g_launch;
  Ctx* saved_cur = g_cur;
  g_launch = &L;
  L.body = &body;
  L.fibers.resize(size_t(nthreads));
  L.warp_slots.assign(size_t((nthreads + 31) / 32), std::vector<uint64_t>(32, 0));
  // volatile: swapcontext returns twice as far as the compiler knows (-Wclobbered); the values do survive.
  for (volatile unsigned bz = 0; bz < grid.z; bz = bz + 1)
    for (volatile unsigned by = 0; by < grid.y; by = by + 1)
      for (volatile unsigned bx = 0; bx < grid.x; bx = bx + 1) {
        L.dyn_smem.assign(smem + 128, 0xCD);  // uninitialised-looking
        for (int t = 0; t < nthreads; t++) {
          Fiber& f = L.fibers[size_t(t)];
          f.state = NotStarted;
          f.linear = t;
          f.c.tid = dim3(unsigned(t) % block.x, (unsigned(t) / block.x) % block.y, unsigned(t) / (block.x * block.y));
          f.c.bid = dim3(bx, by, bz);
          f.c.bdim = block;
          f.c.gdim = grid;
        }
        volatile int done = 0;
        while (done < nthreads) {
          bool ran = false;
          for (int t = 0; t < nthreads; t++) {
            Fiber& f = L.fibers[size_t(t)];
            if (f.state != NotStarted && f.state != Ready) continue;
            ran = true;
            L.current = t;
            g_cur = &f.c;
            if (f.state == NotStarted) {
              if (!L.free_stacks.empty()) {
                f.stack = L.free_stacks.back();
                L.free_stacks.pop_back();
              } else {
                f.stack = static_cast<char*>(std::malloc(kStack));
              }
              getcontext(&f.ctx);
              f.ctx.uc_stack.ss_sp = f.stack;
              f.ctx.uc_stack.ss_size = kStack;
              f.ctx.uc_link = &L.sched;
              makecontext(&f.ctx, trampoline, 0);
              f.state = Ready;
            }
            g_switches++;
            swapcontext(&L.sched, &f.ctx);
            if (f.state == Done) {
              done = done + 1;
              L.free_stacks.push_back(f.stack);
              f.stack = nullptr;
            }
          }
          // Release warps whose live lanes all wait at a shuffle.
          bool released = false;
          for (int w = 0; w * 32 < nthreads; w++) {
            int at = 0, live = 0, block_wait = 0;
            for (int t = w * 32; t < std::min(nthreads, w * 32 + 32); t++) {
              State s = L.fibers[size_t(t)].state;
              if (s == Done) continue;
              live++;
              if (s == AtWarpBarrier) at++;
              if (s == AtBlockBarrier) block_wait++;
            }
            if (at > 0 && at != live) {
              if (at + block_wait == live) fail("warp shuffle with some lanes at __syncthreads (divergent shuffle)");
              continue;
            }
            if (at > 0 && at < std::min(32, nthreads - w * 32)) fail("warp shuffle after some lanes of the warp exited");
            if (at > 0) {
              for (int t = w * 32; t < std::min(nthreads, w * 32 + 32); t++)
                if (L.fibers[size_t(t)].state == AtWarpBarrier) L.fibers[size_t(t)].state = Ready;
              released = true;
            }
          }
          // Release the block barrier when every live thread waits there.
          int live = 0, at = 0;
          for (auto& f : L.fibers) {
            if (f.state == Done) continue;
            live++;
            if (f.state == AtBlockBarrier) at++;
          }
          if (live > 0 && at == live) {
            if (live != nthreads) fail("__syncthreads reached after some threads of the block exited");
            for (auto& f : L.fibers)
              if (f.state == AtBlockBarrier) f.state = Ready;
            released = true;
          }
          if (!ran && !released && done < nthreads) fail("deadlock: threads wait at barriers that cannot complete");
        }
      }
  for (char* s : L.free_stacks) std::free(s);
  g_launch = saved;
  g_cur = saved_cur;
}

inline unsigned char* dyn_smem() {
  uintptr_t p = reinterpret_cast<uintptr_t>(g_launch->dyn_smem.data());
  return reinterpret_cast<unsigned char*>((p + 127) & ~uintptr_t(127));  // as __align__(128)
}

inline void syncthreads() {
  Launch& L = *g_launch;
  L.fibers[size_t(L.current)].state = AtBlockBarrier;
  yield_to_scheduler();
}

inline void warp_barrier() {
  Launch& L = *g_launch;
  L.fibers[size_t(L.current)].state = AtWarpBarrier;
  yield_to_scheduler();
}

template <typename T> inline T exchange(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a large type");
  Launch& L = *g_launch;
  const int me = L.fibers[size_t(L.current)].linear;
  const int w = me / 32, lane = me % 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  L.warp_slots[size_t(w)][size_t(lane)] = bits;
  warp_barrier();
  if (src < 0 || src >= 32) fail("shuffle source lane out of range");
  uint64_t got = L.warp_slots[size_t(w)][size_t(src)];
  warp_barrier();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}

inline int my_lane() { return g_launch->fibers[size_t(g_launch->current)].linear % 32; }

}  // namespace emu

#define threadIdx (::emu::g_cur->tid)
#define blockIdx (::emu::g_cur->bid)
#define blockDim (::emu::g_cur->bdim)
#define gridDim (::emu::g_cur->gdim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline void __syncthreads() { emu::syncthreads(); }
// A real barrier of the warp's lanes (the attention kernels publish shared memory to the warp with it).
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask) { return emu::exchange(v, emu::my_lane() ^ mask); }
template <typename T> inline T __shfl_sync(unsigned, T v, int src) { return emu::exchange(v, src); }
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned d) {
  int s = emu::my_lane() + int(d);
  T r = emu::exchange(v, s < 32 ? s : emu::my_lane());
  return r;
}
struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline long long __double_as_longlong(double d) { long long u; std::memcpy(&u, &d, 8); return u; }
template <typename A, typename B> inline auto min(A a, B b) -> decltype(a < b ? a : b) { return a < b ? a : b; }
template <typename A, typename B> inline auto max(A a, B b) -> decltype(a < b ? b : a) { return a < b ? b : a; }
using std::isinf;
using std::isnan;
