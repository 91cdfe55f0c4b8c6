// device.h: the training device of the `moce` subcommands: the --device flag, moving a model there, and BatchFeed,
// which hands the data loader's batches to the model on that device.
//
// On CUDA a batch goes: loader (pageable host memory) -> one of two pinned host buffers (cudaHostAlloc, allocated
// once and reused) -> device memory, by an asynchronous copy on a copy stream of its own; an event makes the compute
// stream wait for the copy before the first kernel that reads the batch. prefetch() starts the copy of the next
// batch while the current step's kernels run, so the transfer overlaps compute:
//
//   feed.start_epoch(epoch, steps);
//   while (feed.next(b)) {              // b.images on the device; compute is ordered after its copy
//     auto out = model.forward(b.images, ...);   // kernels are queued, the GPU starts on them
//     feed.prefetch();                  // meanwhile: next batch from the loader, into pinned memory, copy queued
//     backward; step                    // the loss is read back later (pretrain.cpp: at log lines)
//   }
// On the CPU, next() is the loader's next() and prefetch() does nothing: that path is exactly the loader's.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "data/loader.h"
#include "engine/tensor.h"
#include "model/mae.h"

namespace moce {

// The device a --device flag names, checked now: "cpu", "cuda" or "cuda:N". Without a usable GPU this throws one
// line naming the flag ("--device cuda<context>: no CUDA GPU was found ...", or "... this build has no CUDA
// backend ..."); `context` says where the value came from when it was not typed, e.g. " (saved in FILE)".
eng::Device device_from_flag(const std::string& value, const std::string& context = "");

// Moves every tensor of the model (parameters, which stay leaves that require grad, and fixed buffers) to `device`.
void move_to_device(model::MaskedAutoencoder& model, eng::Device device);

// Host copies of tensors (the tensors themselves when they are on the CPU already): what checkpoints are written from.
std::map<std::string, eng::Tensor> host_copies(const std::map<std::string, eng::Tensor>& tensors);

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
  // cudaHostAlloc calls made so far (0 on the CPU): stays at 2 in steady state, whatever the number of batches.
  size_t pinned_allocations() const;

 private:
  struct Cuda;  // streams, events and pinned buffers (CUDA builds only)
  bool fetch(data::Batch& out);
  data::Loader& loader_;
  eng::Device device_;
  int64_t limit_ = 0, fetched_ = 0;
  std::unique_ptr<Cuda> cuda_;
};

}  // namespace moce
