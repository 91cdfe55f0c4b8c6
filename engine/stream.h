// stream.h: device-neutral streams, events, pinned host memory, asynchronous host-to-device copies and profiler
// capture bounds, for code outside the backends (the training loop's input pipeline, moce/common/batch_feed.cpp).
//
// Every type takes an eng::Device. On a CUDA device they forward to the CUDA backend (engine/backends/cuda/
// cuda_stream.h): a non-blocking copy stream, events for ordering only, cudaHostAlloc'd buffers. On the CPU they
// are cheap stand-ins with the same meaning: a stream and an event are no-ops (the CPU's work is done when the call
// returns), a pinned buffer is plain host memory, and the asynchronous copy is a memcpy. So the caller writes one
// path for every device:
//
//   eng::PinnedBuffer host(device);  host.reserve(n);            // allocated once, reused
//   eng::Stream copy(device);        eng::Event copied(device);
//   std::memcpy(host.data(), batch, n);
//   eng::copy_to_device_async(dev_ptr, host.data(), n, copy);
//   copied.record(copy);
//   eng::compute_wait(copied);                                     // ops queued after this see the bytes
//
// Constructing any of them for a CUDA device in a build without the CUDA backend throws one line saying so.
#pragma once
#include <cstddef>
#include <memory>

#include "engine/dtype.h"

namespace eng {

// Whether this build has the CUDA backend (made with nvcc and cuBLAS, and not CUDA=0).
bool built_with_cuda();
// Visible CUDA GPUs; 0 when there are none, the driver is missing, or the build has no CUDA backend. Never throws.
int gpu_count();

class Event;

// A stream of work on one device, apart from the stream the ops run on ("the compute stream"); it is ordered
// against the compute stream only through events. On CUDA a non-blocking stream; on the CPU nothing.
class Stream {
 public:
  explicit Stream(Device device);
  ~Stream();  // waits for the stream's work to finish
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Device device() const { return device_; }
  void synchronize() const;         // the host waits for all work queued on the stream
  void wait(const Event& e) const;  // later work on this stream waits for e (the host does not)

 private:
  friend class Event;
  friend void copy_to_device_async(void*, const void*, size_t, const Stream&);
  struct Impl;
  Device device_;
  std::unique_ptr<Impl> impl_;  // null on the CPU
};

// A mark in a stream's work, for ordering only (no timing).
class Event {
 public:
  explicit Event(Device device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Device device() const { return device_; }
  void record(const Stream& s);  // marks the work queued on s so far
  void record_compute();         // marks the work queued on the device's compute stream so far
  void synchronize() const;      // the host waits until the marked work is done
  bool done() const;             // true when the marked work is done (or nothing was recorded)

 private:
  friend class Stream;
  friend void compute_wait(const Event&);
  struct Impl;
  Device device_;
  std::unique_ptr<Impl> impl_;  // null on the CPU
};

// Later work on the compute stream of e's device waits for e; the host does not block. Nothing on the CPU.
void compute_wait(const Event& e);

// Host memory that asynchronous copies to `device` can read: page-locked (cudaHostAlloc) for a CUDA device, plain
// on the CPU. Grows on demand and never shrinks; freeing pinned memory synchronises the device, so keep one and
// reuse it.
class PinnedBuffer {
 public:
  explicit PinnedBuffer(Device device);
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // At least nbytes of capacity; reallocates (contents lost) only when it has less.
  void reserve(size_t nbytes);
  void* data() const;
  size_t capacity() const;
  size_t allocations() const;  // allocations made so far (for tests: reuse)
  Device device() const { return device_; }

 private:
  struct Impl;
  Device device_;
  std::unique_ptr<Impl> impl_;
};

// Queues a copy of nbytes from a PinnedBuffer's memory to memory on s's device and returns at once (on the CPU:
// copies now). The source must stay untouched, and the destination unread, until an event recorded on `s` after
// this call has completed.
void copy_to_device_async(void* dst_device, const void* src_pinned, size_t nbytes, const Stream& s);

// Bound the capture of `nsys profile --capture-range=cudaProfilerApi` and of `ncu --profile-from-start off` on a
// CUDA device (cudaProfilerStart / cudaProfilerStop); no effect without a profiler attached, nothing on the CPU.
void profiler_start(Device device);
void profiler_stop(Device device);

}  // namespace eng
