// cuda_stream.h: CUDA streams, events, pinned (page-locked) host memory and asynchronous host-to-device copies,
// as RAII types for code outside the backend (the training loop's input pipeline, moce's BatchFeed).
//
// Plain C++ with no CUDA header, so g++-compiled code can use it; the definitions are in cuda_backend.cu, so it
// links only in a CUDA build (ENGINE_WITH_CUDA). Handles are kept as void* (cudaStream_t / cudaEvent_t).
//
// The backend's ops all run on the legacy default stream of their device ("the compute stream", see
// cuda_common.cuh). A Stream made here is non-blocking: work on it overlaps the compute stream and is ordered
// against it only through events (record on one side, wait on the other).
//
//   eng::cuda::PinnedBuffer host;  host.reserve(n);          // cudaHostAlloc once, reused
//   eng::cuda::Stream copy(0);     eng::cuda::Event copied(0);
//   std::memcpy(host.data(), batch, n);
//   eng::cuda::copy_to_device_async(dev_ptr, host.data(), n, copy);
//   copied.record(copy);
//   eng::cuda::compute_wait(copied);                          // kernels launched after this see the bytes
#pragma once
#include <cstddef>

namespace eng::cuda {

// Visible GPUs; 0 when there are none or the driver is missing (never throws).
int device_count();

class Event;

// A non-blocking stream on one device (cudaStreamCreateWithFlags(cudaStreamNonBlocking)).
class Stream {
 public:
  explicit Stream(int device);
  ~Stream();  // waits for the stream's work to finish, then destroys it
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  int device() const { return device_; }
  void* handle() const { return stream_; }  // the cudaStream_t
  void synchronize() const;                 // the host waits for all work queued on the stream
  void wait(const Event& e) const;          // later work on this stream waits for e (the host does not)

 private:
  int device_;
  void* stream_ = nullptr;
};

// An event without timing (cudaEventDisableTiming: the cheapest kind, for ordering only).
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  int device() const { return device_; }
  void* handle() const { return event_; }  // the cudaEvent_t
  void record(const Stream& s);            // marks the work queued on s so far
  void record_compute();                   // marks the work queued on the device's compute stream so far
  void synchronize() const;                // the host waits until the marked work is done
  bool done() const;                       // true when the marked work is done (or nothing was recorded)

 private:
  int device_;
  void* event_ = nullptr;
};

// Later work on the compute stream of e's device waits for e; the host does not block.
void compute_wait(const Event& e);

// Page-locked host memory (cudaHostAlloc), so host-to-device copies from it run asynchronously at full bus speed.
// Grows on demand and never shrinks; freeing it (cudaFreeHost) synchronises the device, so keep one and reuse it.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  // At least nbytes of capacity; reallocates (contents lost) only when it has less.
  void reserve(size_t nbytes);
  void* data() const { return data_; }
  size_t capacity() const { return capacity_; }
  size_t allocations() const { return allocations_; }  // cudaHostAlloc calls so far (for tests: reuse)

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0, allocations_ = 0;
};

// Queues a copy of nbytes from pinned host memory to device memory on `s` and returns at once. The source must
// stay untouched, and the destination unread, until an event recorded on `s` after this call has completed.
void copy_to_device_async(void* dst_device, const void* src_pinned, size_t nbytes, const Stream& s);

// cudaProfilerStart / cudaProfilerStop: bound the capture of `nsys profile --capture-range=cudaProfilerApi` and of
// `ncu --profile-from-start off`. No effect without a profiler attached.
void profiler_start();
void profiler_stop();

}  // namespace eng::cuda
