// batch_feed.cpp: BatchFeed (pinned staging, asynchronous copies on a copy stream, events); see batch_feed.h.
#include "moce/common/batch_feed.h"

#include <cstring>

#include "engine/error.h"
#include "engine/nvtx.h"
#include "engine/stream.h"

namespace moce {

struct BatchFeed::Staging {
  // One pinned buffer and the event that marks the end of the last copy out of it; two of them alternate, so the
  // next batch is staged while the current one's copy may still run.
  struct Stage {
    explicit Stage(eng::Device device) : host(device), copied(device) {}
    eng::PinnedBuffer host;
    eng::Event copied;
  };
  explicit Staging(eng::Device device) : stream(device), allocated(device) {
    for (auto& s : stages) s = std::make_unique<Stage>(device);
  }
  ~Staging() {
    // A queued copy may still write the batch held in `ahead`, whose device block goes back to the caching
    // allocator below, and read a pinned buffer freed below.
    try {
      stream.synchronize();
    } catch (...) {
    }
  }
  eng::Stream stream;     // the copy stream
  eng::Event allocated;   // the compute stream's queued work when a batch's device block was handed out
  std::unique_ptr<Stage> stages[2];
  int next_stage = 0, last_stage = 0;
  bool have_ahead = false;  // `ahead` was prefetched and not yet delivered
  data::Batch ahead;
};

BatchFeed::BatchFeed(data::Loader& loader, eng::Device device) : loader_(loader), device_(device) {
  ENG_CHECK(device.is_cpu() || eng::built_with_cuda(), "BatchFeed: device {} needs the CUDA backend, which this build lacks",
            device.str());
  if (!device.is_cpu()) staging_ = std::make_unique<Staging>(device);
}

BatchFeed::~BatchFeed() = default;

void BatchFeed::start_epoch(int64_t epoch, int64_t batches) {
  if (staging_) {
    staging_->stream.synchronize();  // a batch prefetched for an abandoned epoch: its copy is done before it is freed
    staging_->have_ahead = false;
    staging_->ahead = data::Batch();
  }
  loader_.start_epoch(epoch);
  limit_ = batches;
  fetched_ = 0;
}

bool BatchFeed::fetch(data::Batch& b) {
  if (fetched_ >= limit_ || !loader_.next(b)) return false;
  fetched_++;
  if (!staging_) return true;
  ENG_NVTX_RANGE("feed.stage_and_copy");
  Staging& st = *staging_;
  st.last_stage = st.next_stage;
  st.next_stage ^= 1;
  Staging::Stage& s = *st.stages[st.last_stage];
  const eng::Tensor host = b.images.contiguous();
  const size_t n = host.nbytes();
  s.copied.synchronize();  // the copy that last read this pinned buffer (two batches ago) has finished
  s.host.reserve(n);
  std::memcpy(s.host.data(), host.raw_data(), n);
  eng::Tensor dev = eng::Tensor::empty(host.shape(), host.dtype(), device_);
  // The caching allocator hands out blocks in compute-stream order: this one may have been freed by kernels still
  // queued there, so the copy stream waits for the compute stream's queued work before writing it.
  st.allocated.record_compute();
  st.stream.wait(st.allocated);
  eng::copy_to_device_async(dev.raw_data(), s.host.data(), n, st.stream);
  s.copied.record(st.stream);
  b.images = dev;
  return true;
}

void BatchFeed::prefetch() {
  if (!staging_ || staging_->have_ahead) return;
  staging_->have_ahead = fetch(staging_->ahead);
}

bool BatchFeed::next(data::Batch& out) {
  if (!staging_) return fetch(out);
  if (staging_->have_ahead) {
    out = std::move(staging_->ahead);
    staging_->ahead = data::Batch();
    staging_->have_ahead = false;
  } else if (!fetch(out)) {
    return false;
  }
  // Kernels queued from now on (the ones that read out.images) run after its copy.
  eng::compute_wait(staging_->stages[staging_->last_stage]->copied);
  return true;
}

size_t BatchFeed::pinned_allocations() const {
  size_t n = 0;
  if (staging_)
    for (const auto& s : staging_->stages) n += s->host.allocations();
  return n;
}

}  // namespace moce
