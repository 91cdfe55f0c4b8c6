// batch_feed.h: BatchFeed, which hands the data loader's batches to the model on the training device.
//
// On a GPU a batch goes: loader (pageable host memory) -> one of two pinned host buffers (allocated once and
// reused) -> device memory, by an asynchronous copy on a copy stream of its own; an event makes the compute stream
// wait for the copy before the first kernel that reads the batch. prefetch() starts the copy of the next batch while
// the current step's kernels run, so the transfer overlaps compute:
//
//   feed.start_epoch(epoch, steps);
//   while (feed.next(b)) {              // b.images on the device; compute is ordered after its copy
//     auto out = model.forward(b.images, ...);   // kernels are queued, the GPU starts on them
//     feed.prefetch();                  // meanwhile: next batch from the loader, into pinned memory, copy queued
//     backward; step                    // the loss is read back later (moce/train/pretrain.cpp: at log lines)
//   }
// On the CPU, next() is the loader's next() and prefetch() does nothing: that path is exactly the loader's.
// Streams, events and pinned memory come from engine/stream.h, so this file knows no backend.
#pragma once
#include <cstdint>
#include <memory>

#include "data/loader.h"
#include "engine/dtype.h"

namespace moce {

class BatchFeed {
 public:
  BatchFeed(data::Loader& loader, eng::Device device);
  ~BatchFeed();  // waits for a copy still in flight (its buffers are freed here)
  BatchFeed(const BatchFeed&) = delete;
  BatchFeed& operator=(const BatchFeed&) = delete;

  // Starts `epoch` of the loader; next() then delivers its first `batches` batches (fewer if the epoch has fewer).
  void start_epoch(int64_t epoch, int64_t batches);
  // The next batch, images on the feed's device (labels and indices stay on the CPU); false after the last.
  // Call it when the work on the previous batch has been queued.
  bool next(data::Batch& out);
  // Fetches the batch after the one next() returned and queues its copy to the device, so that it overlaps the work
  // queued since. Optional (next() fetches what was not prefetched); does nothing on the CPU or past the last batch.
  void prefetch();

  eng::Device device() const { return device_; }
  // Pinned-memory allocations made so far (0 on the CPU): stays at 2 in steady state, whatever the number of batches.
  size_t pinned_allocations() const;

 private:
  struct Staging;  // copy stream, events and pinned buffers (devices other than the CPU)
  bool fetch(data::Batch& out);
  data::Loader& loader_;
  eng::Device device_;
  int64_t limit_ = 0, fetched_ = 0;
  std::unique_ptr<Staging> staging_;
};

}  // namespace moce
