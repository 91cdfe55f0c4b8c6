// Fake CUDA runtime for the CPU emulation build.
//
// Kernels and everything on the default stream (stream 0) run at once, in call order. Work queued on a stream made
// with cudaStreamCreate* (asynchronous copies and memsets) is deferred: it runs when something orders it, i.e.
// cudaStreamSynchronize, cudaEventSynchronize/Query of an event recorded after it, cudaStreamWaitEvent on such an
// event, cudaDeviceSynchronize, cudaFree/cudaFreeHost (which synchronise a GPU) or the stream's destruction. So a
// kernel that reads a copy's destination without waiting for its event sees stale bytes, and a pinned source
// rewritten before its copy ran gets copied rewritten: tests then fail as they could on a GPU, only reliably.
// Host-to-device copies on such a stream must come from cudaHostAlloc memory (from pageable memory a real GPU
// copies synchronously, so the overlap the code wants would not happen).
#pragma once
#include <algorithm>
#include <functional>
#include <map>
#include <vector>

#include "emu_core.h"

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorNotReady = 600,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
typedef void* cudaStream_t;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00

// ---- the emulated streams (see the top of this file) ----
namespace emu {
struct Stream {
  std::vector<std::function<void()>> pending;  // queued and not yet run; pending[0] is operation number base()
  uint64_t issued = 0, completed = 0;          // operations queued / run so far
  uint64_t base() const { return issued - pending.size(); }
};
struct Event {
  Stream* stream = nullptr;  // null: recorded on the default stream (complete at once), or never recorded
  uint64_t seq = 0;          // how many of the stream's operations precede the event
};
inline std::vector<Stream*>& streams() {
  static std::vector<Stream*> all;
  return all;
}
inline std::map<const char*, size_t>& pinned_blocks() {  // start -> size
  static std::map<const char*, size_t> blocks;
  return blocks;
}
inline bool is_pinned(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  auto& b = pinned_blocks();
  auto it = b.upper_bound(c);
  if (it == b.begin()) return false;
  --it;
  return c + n <= it->first + it->second;
}
// Runs the stream's queued operations, in order, until `upto` of them have run.
inline void drain(Stream* s, uint64_t upto) {
  if (!s || std::find(streams().begin(), streams().end(), s) == streams().end()) return;  // none, or destroyed
  while (s->completed < upto) {
    std::function<void()> op = std::move(s->pending[size_t(s->completed - s->base())]);
    s->completed++;
    op();
  }
  if (s->completed == s->issued) s->pending.clear();
}
inline void drain_all() {
  for (Stream* s : streams()) drain(s, s->issued);
}
inline void enqueue(void* stream, std::function<void()> op) {
  if (!stream) {
    op();
    return;
  }
  Stream* s = static_cast<Stream*>(stream);
  s->pending.push_back(std::move(op));
  s->issued++;
}
}  // namespace emu

typedef emu::Event* cudaEvent_t;

inline const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmu"; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() {
  emu::drain_all();
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);  // exact size, so AddressSanitizer sees any access past a buffer
  if (*p) std::memset(*p, 0xAB, n);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) {
  emu::drain_all();  // cudaFree synchronises the device
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { std::memmove(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemset(void* d, int v, size_t n) { std::memset(d, v, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind kind, cudaStream_t stream) {
  if (stream && kind == cudaMemcpyHostToDevice && !emu::is_pinned(s, n))
    emu::fail("cudaMemcpyAsync host-to-device on a stream from pageable memory (a GPU would copy synchronously)");
  emu::enqueue(stream, [=] { std::memmove(d, s, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t stream) {
  emu::enqueue(stream, [=] { std::memset(d, v, n); });
  return cudaSuccess;
}

// ---- streams, events, pinned host memory, profiler bounds ----
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  auto* st = new emu::Stream();
  emu::streams().push_back(st);
  *s = st;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (s) emu::drain(static_cast<emu::Stream*>(s), static_cast<emu::Stream*>(s)->issued);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return cudaErrorInvalidValue;
  auto* st = static_cast<emu::Stream*>(s);
  emu::drain(st, st->issued);  // queued work still completes, as on a GPU
  auto& all = emu::streams();
  auto it = std::find(all.begin(), all.end(), st);
  if (it == all.end()) emu::fail("cudaStreamDestroy of a stream that does not exist");
  all.erase(it);
  delete st;
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = new emu::Event();
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  e->stream = static_cast<emu::Stream*>(s);
  e->seq = s ? e->stream->issued : 0;
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  emu::drain(e->stream, e->seq);
  return cudaSuccess;
}
inline cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
// The default stream runs everything at once, so a wait there means: finish the event's work now. For a wait on
// another stream, finishing now is also an order that satisfies it.
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned = 0) { return cudaEventSynchronize(e); }
inline cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) {
  *p = std::malloc(n ? n : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xAB, n);
  emu::pinned_blocks()[static_cast<const char*>(*p)] = n;
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  emu::drain_all();  // cudaFreeHost synchronises the device
  if (emu::pinned_blocks().erase(static_cast<const char*>(p)) != 1) emu::fail("cudaFreeHost of memory not from cudaHostAlloc");
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaProfilerStart() { return cudaSuccess; }
inline cudaError_t cudaProfilerStop() { return cudaSuccess; }
