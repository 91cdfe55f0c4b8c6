// device.cpp: the --device flag, moving a model to its device, and BatchFeed (pinned staging, asynchronous copies
// on a copy stream, events); see device.h.
#include "moce/device.h"

#include <cstring>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/nvtx.h"
#ifdef ENGINE_WITH_CUDA
#include "engine/backends/cuda/cuda_stream.h"
#endif

namespace moce {

eng::Device device_from_flag(const std::string& value, const std::string& context) {
  eng::Device d;
  try {
    d = eng::Device::parse(value);
  } catch (const eng::Error&) {
    ENG_FAIL("--device {}{}: unknown device; expected cpu, cuda or cuda:N", value, context);
  }
  if (d.is_cpu()) return d;
#ifndef ENGINE_WITH_CUDA
  ENG_FAIL("--device {}{}: this build has no CUDA backend (made without nvcc and cuBLAS, or with CUDA=0); use "
           "--device cpu", value, context);
#else
  ENG_CHECK(eng::cuda_available(), "--device {}{}: no CUDA GPU was found (check nvidia-smi and CUDA_VISIBLE_DEVICES); "
            "use --device cpu", value, context);
  const int n = eng::cuda::device_count();
  ENG_CHECK(d.index >= 0 && d.index < n, "--device {}{}: only {} CUDA GPU{} visible (cuda:0 to cuda:{})", value, context,
            n, n == 1 ? " is" : "s are", n - 1);
  return d;
#endif
}

void move_to_device(model::MaskedAutoencoder& model, eng::Device device) {
  model.visit([&](const std::string&, eng::Tensor& t) {
    if (t.device() == device) return;
    const bool trainable = t.requires_grad();
    t = t.detach().to(device).detach();
    if (trainable) t.requires_grad_(true);
  });
}

std::map<std::string, eng::Tensor> host_copies(const std::map<std::string, eng::Tensor>& tensors) {
  std::map<std::string, eng::Tensor> out;
  for (const auto& [name, t] : tensors) out[name] = t.device().is_cpu() ? t : t.detach().to(eng::Device::cpu());
  return out;
}

// ---------------------------------------------------------------- BatchFeed

#ifdef ENGINE_WITH_CUDA
struct BatchFeed::Cuda {
  // One pinned buffer and the event that marks the end of the last copy out of it; two of them alternate, so the
  // next batch is staged while the current one's copy may still run.
  struct Stage {
    explicit Stage(int device) : copied(device) {}
    eng::cuda::PinnedBuffer host;
    eng::cuda::Event copied;
  };
  explicit Cuda(int device) : stream(device), allocated(device) {
    for (auto& s : stages) s = std::make_unique<Stage>(device);
  }
  ~Cuda() {
    // A queued copy may still write the batch held in `ahead`, whose device block goes back to the caching
    // allocator below, and read a pinned buffer freed below.
    try {
      stream.synchronize();
    } catch (...) {
    }
  }
  eng::cuda::Stream stream;     // the copy stream
  eng::cuda::Event allocated;   // the compute stream's queued work when a batch's device block was handed out
  std::unique_ptr<Stage> stages[2];
  int next_stage = 0, last_stage = 0;
  bool have_ahead = false;      // `ahead` was prefetched and not yet delivered
  data::Batch ahead;
};
#else
struct BatchFeed::Cuda {};
#endif

BatchFeed::BatchFeed(data::Loader& loader, eng::Device device) : loader_(loader), device_(device) {
#ifdef ENGINE_WITH_CUDA
  if (device.is_cuda()) cuda_ = std::make_unique<Cuda>(device.index);
#else
  ENG_CHECK(device.is_cpu(), "BatchFeed: device {} needs the CUDA backend, which this build lacks", device.str());
#endif
}

BatchFeed::~BatchFeed() = default;

void BatchFeed::start_epoch(int64_t epoch, int64_t batches) {
#ifdef ENGINE_WITH_CUDA
  if (cuda_) {
    cuda_->stream.synchronize();  // a batch prefetched for an abandoned epoch: its copy is done before it is freed
    cuda_->have_ahead = false;
    cuda_->ahead = data::Batch();
  }
#endif
  loader_.start_epoch(epoch);
  limit_ = batches;
  fetched_ = 0;
}

bool BatchFeed::fetch(data::Batch& b) {
  if (fetched_ >= limit_ || !loader_.next(b)) return false;
  fetched_++;
#ifdef ENGINE_WITH_CUDA
  if (cuda_) {
    ENG_NVTX_RANGE("feed.stage_and_copy");
    Cuda& c = *cuda_;
    c.last_stage = c.next_stage;
    c.next_stage ^= 1;
    Cuda::Stage& s = *c.stages[c.last_stage];
    const eng::Tensor host = b.images.contiguous();
    const size_t n = host.nbytes();
    s.copied.synchronize();  // the copy that last read this pinned buffer (two batches ago) has finished
    s.host.reserve(n);
    std::memcpy(s.host.data(), host.raw_data(), n);
    eng::Tensor dev = eng::Tensor::empty(host.shape(), host.dtype(), device_);
    // The caching allocator hands out blocks in compute-stream order: this one may have been freed by kernels still
    // queued there, so the copy stream waits for the compute stream's queued work before writing it.
    c.allocated.record_compute();
    c.stream.wait(c.allocated);
    eng::cuda::copy_to_device_async(dev.raw_data(), s.host.data(), n, c.stream);
    s.copied.record(c.stream);
    b.images = dev;
  }
#endif
  return true;
}

void BatchFeed::prefetch() {
#ifdef ENGINE_WITH_CUDA
  if (!cuda_ || cuda_->have_ahead) return;
  cuda_->have_ahead = fetch(cuda_->ahead);
#endif
}

bool BatchFeed::next(data::Batch& out) {
#ifdef ENGINE_WITH_CUDA
  if (cuda_) {
    if (cuda_->have_ahead) {
      out = std::move(cuda_->ahead);
      cuda_->ahead = data::Batch();
      cuda_->have_ahead = false;
    } else if (!fetch(out)) {
      return false;
    }
    // Kernels queued from now on (the ones that read out.images) run after its copy.
    eng::cuda::compute_wait(cuda_->stages[cuda_->last_stage]->copied);
    return true;
  }
#endif
  return fetch(out);
}

size_t BatchFeed::pinned_allocations() const {
  size_t n = 0;
#ifdef ENGINE_WITH_CUDA
  if (cuda_)
    for (const auto& s : cuda_->stages) n += s->host.allocations();
#endif
  return n;
}

}  // namespace moce
