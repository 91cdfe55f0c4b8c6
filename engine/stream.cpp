// stream.cpp: streams, events, pinned buffers and copies for any device (see stream.h). The one place outside
// engine/backends/cuda that knows whether the CUDA backend was built: on a CUDA device every call forwards to
// engine/backends/cuda/cuda_stream.h, on the CPU it is a no-op or a memcpy.
#include "engine/stream.h"

#include <cstring>
#include <vector>

#include "engine/error.h"
#ifdef ENGINE_WITH_CUDA
#include "engine/backends/cuda/cuda_stream.h"
#endif

namespace eng {

namespace {

// A CUDA device in a build without the CUDA backend: one line naming the device and what it lacks.
void check_backend(Device d, const char* what) {
  ENG_CHECK(d.is_cpu() || built_with_cuda(), "{} on device {} needs the CUDA backend, which this build lacks", what,
            d.str());
}

}  // namespace

#ifdef ENGINE_WITH_CUDA
bool built_with_cuda() { return true; }
int gpu_count() { return cuda::device_count(); }

struct Stream::Impl {
  explicit Impl(int device) : stream(device) {}
  cuda::Stream stream;
};
struct Event::Impl {
  explicit Impl(int device) : event(device) {}
  cuda::Event event;
};
#else
bool built_with_cuda() { return false; }
int gpu_count() { return 0; }

// Never made: check_backend stops a CUDA device first.
struct Stream::Impl {
  explicit Impl(int) {}
};
struct Event::Impl {
  explicit Impl(int) {}
};
#endif

// ---------------------------------------------------------------- Stream

Stream::Stream(Device device) : device_(device) {
  check_backend(device, "a stream");
  if (device.is_cuda()) impl_ = std::make_unique<Impl>(device.index);
}

Stream::~Stream() = default;

void Stream::synchronize() const {
#ifdef ENGINE_WITH_CUDA
  if (impl_) impl_->stream.synchronize();
#endif
}

void Stream::wait(const Event& e) const {
  ENG_CHECK(e.device() == device_, "a stream on {} cannot wait for an event on {}", device_.str(), e.device().str());
#ifdef ENGINE_WITH_CUDA
  if (impl_) impl_->stream.wait(e.impl_->event);
#endif
}

// ---------------------------------------------------------------- Event

Event::Event(Device device) : device_(device) {
  check_backend(device, "an event");
  if (device.is_cuda()) impl_ = std::make_unique<Impl>(device.index);
}

Event::~Event() = default;

void Event::record(const Stream& s) {
  ENG_CHECK(s.device() == device_, "an event on {} cannot mark a stream on {}", device_.str(), s.device().str());
#ifdef ENGINE_WITH_CUDA
  if (impl_) impl_->event.record(s.impl_->stream);
#endif
}

void Event::record_compute() {
#ifdef ENGINE_WITH_CUDA
  if (impl_) impl_->event.record_compute();
#endif
}

void Event::synchronize() const {
#ifdef ENGINE_WITH_CUDA
  if (impl_) impl_->event.synchronize();
#endif
}

bool Event::done() const {
#ifdef ENGINE_WITH_CUDA
  if (impl_) return impl_->event.done();
#endif
  return true;
}

void compute_wait(const Event& e) {
#ifdef ENGINE_WITH_CUDA
  if (e.impl_) cuda::compute_wait(e.impl_->event);
#endif
}

// ---------------------------------------------------------------- PinnedBuffer

struct PinnedBuffer::Impl {
#ifdef ENGINE_WITH_CUDA
  cuda::PinnedBuffer pinned;  // CUDA devices
#endif
  std::vector<unsigned char> plain;  // the CPU
  size_t plain_allocations = 0;
};

PinnedBuffer::PinnedBuffer(Device device) : device_(device) {
  check_backend(device, "a pinned buffer");
  impl_ = std::make_unique<Impl>();
}

PinnedBuffer::~PinnedBuffer() = default;

void PinnedBuffer::reserve(size_t nbytes) {
#ifdef ENGINE_WITH_CUDA
  if (device_.is_cuda()) return impl_->pinned.reserve(nbytes);
#endif
  if (nbytes <= impl_->plain.size()) return;
  // A fresh vector rather than resize(): the contents are not kept, so they need not be copied.
  std::vector<unsigned char>(nbytes).swap(impl_->plain);
  impl_->plain_allocations++;
}

void* PinnedBuffer::data() const {
#ifdef ENGINE_WITH_CUDA
  if (device_.is_cuda()) return impl_->pinned.data();
#endif
  return impl_->plain.empty() ? nullptr : impl_->plain.data();
}

size_t PinnedBuffer::capacity() const {
#ifdef ENGINE_WITH_CUDA
  if (device_.is_cuda()) return impl_->pinned.capacity();
#endif
  return impl_->plain.size();
}

size_t PinnedBuffer::allocations() const {
#ifdef ENGINE_WITH_CUDA
  if (device_.is_cuda()) return impl_->pinned.allocations();
#endif
  return impl_->plain_allocations;
}

// ---------------------------------------------------------------- copies and the profiler

void copy_to_device_async(void* dst_device, const void* src_pinned, size_t nbytes, const Stream& s) {
#ifdef ENGINE_WITH_CUDA
  if (s.impl_) return cuda::copy_to_device_async(dst_device, src_pinned, nbytes, s.impl_->stream);
#endif
  if (nbytes > 0) std::memcpy(dst_device, src_pinned, nbytes);
}

void profiler_start(Device device) {
  check_backend(device, "the profiler");
#ifdef ENGINE_WITH_CUDA
  if (device.is_cuda()) cuda::profiler_start();
#endif
}

void profiler_stop(Device device) {
  check_backend(device, "the profiler");
#ifdef ENGINE_WITH_CUDA
  if (device.is_cuda()) cuda::profiler_stop();
#endif
}

}  // namespace eng
