// loader.h: the threaded batch loader. Worker threads decode, transform and stack batches ahead of the
// training step into a bounded queue; batches come out in order and are a pure function of
// (dataset, pipeline, options, epoch, batch number), whatever the number of workers.
//
// One epoch, for rank r of W:
//   order  = Generator(seed, stream = epoch).permutation(N)       (0..N-1 when shuffle is off)
//   per-rank samples S = drop_last ? floor(N / W) : ceil(N / W);   the order is truncated to S * W, or
//            padded to S * W by repeating its beginning (as torch's DistributedSampler does)
//   rank r takes order[r], order[r + W], order[r + 2W], ...       (S indices)
//   batch k = positions [k * B, min((k + 1) * B, S)) of that list;  batches = drop_last ? S / B : ceil(S / B)
// so every rank gets the same number of batches, and with drop_last = false the ranks together cover
// every image. Augmentation of image i in epoch e uses the Pipeline's counters for (seed, e, i).
//
// Corrupt images (data::CorruptImage from Dataset::get) are skipped: the slot takes the next image
// after the end of its batch in this rank's list (positions end, end + 1, ..., wrapping around), so a
// batch stays full and still depends on nothing but its number; that replacement image then appears
// twice in the epoch. Skips are recorded with the batch and counted when it is delivered. With
// strict = true the first corrupt image (in batch order) is thrown instead. Any other error (a missing
// file, a transform error, mixed image sizes) is always thrown, from next(), in batch order.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "data/dataset.h"
#include "data/transforms.h"
#include "engine/tensor.h"

namespace data {

struct LoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = true;
  bool drop_last = true;  // drops the last partial batch, and truncates (rather than pads) the rank split
  uint64_t seed = 0;
  int num_workers = 2;    // 0: each batch is made inside next(), on the calling thread
  int prefetch = 0;       // batches made ahead of the consumer (queued or in progress); 0: 2 * num_workers
  int rank = 0;
  int world_size = 1;
  bool strict = false;    // throw the first corrupt image instead of skipping it
};

struct SkipRecord {
  int64_t index = -1;  // dataset index
  std::string id;      // the dataset's id (a file path)
  std::string reason;  // the CorruptImage message
};

struct Batch {
  eng::Tensor images;   // f32 [B, 3, H, W] (after the pipeline, so normalised if it normalises)
  eng::Tensor labels;   // i64 [B]
  eng::Tensor indices;  // i64 [B] dataset indices, for messages (Loader::batch_ids)
  int64_t epoch = 0;
  int64_t batch = 0;               // number within the epoch
  std::vector<SkipRecord> skipped;  // corrupt images replaced while making this batch
};

class Loader {
 public:
  Loader(std::shared_ptr<const Dataset> dataset, Pipeline pipeline, LoaderOptions options);
  ~Loader();  // stops and joins the workers, also mid-epoch
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t samples_per_rank() const { return samples_per_rank_; }
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // This rank's dataset indices for `epoch`, in batch order (samples_per_rank() of them).
  std::vector<int64_t> epoch_order(int64_t epoch) const;

  // Starts making the batches of `epoch` from batch number `first_batch` on (to resume mid-epoch from a
  // checkpoint). Abandons any epoch in progress.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch in order; false at the end of the epoch. Rethrows a worker's error for that batch,
  // after which the epoch is over (start_epoch again to go on). Call from one thread only.
  bool next(Batch& out);
  // Stops the workers and drops the rest of the epoch.
  void stop();

  // Corrupt images met in the batches delivered so far in the current epoch (each image once).
  int64_t skipped() const { return int64_t(skipped_records_.size()); }
  std::vector<std::string> skipped_ids() const;
  const std::vector<SkipRecord>& skipped_records() const { return skipped_records_; }
  int64_t skipped_total() const { return skipped_total_; }  // the same, summed over epochs
  // One line for the end of an epoch: "epoch 3: 2 corrupt images skipped: a.jpg (reason); b.jpg (reason)".
  std::string skip_summary(size_t max_listed = 10) const;
  // "id, id, ... (+N more)" for the images of a batch: for errors such as a non-finite loss.
  std::string batch_ids(const Batch& batch, size_t max_listed = 8) const;

  const Dataset& dataset() const { return *dataset_; }
  const Pipeline& pipeline() const { return pipeline_; }
  const LoaderOptions& options() const { return options_; }

 private:
  struct Slot {
    Batch batch;
    std::exception_ptr error;
  };
  Batch make_batch(int64_t k) const;
  void worker_loop();
  void stop_workers();

  std::shared_ptr<const Dataset> dataset_;
  Pipeline pipeline_;
  LoaderOptions options_;
  int64_t samples_per_rank_ = 0, batches_per_epoch_ = 0;

  // The epoch in progress. order_ and epoch_ are written only while no worker runs.
  std::vector<int64_t> order_;
  int64_t epoch_ = -1;
  bool epoch_started_ = false, epoch_failed_ = false;

  std::mutex mu_;                  // guards everything below
  std::condition_variable cv_work_;   // workers: a batch may be started
  std::condition_variable cv_ready_;  // consumer: a batch is done
  bool stopping_ = false;
  int64_t next_to_make_ = 0, next_to_deliver_ = 0;
  std::map<int64_t, Slot> done_;
  std::atomic<bool> cancel_{false};  // read by workers between images, to stop mid-batch
  std::vector<std::thread> workers_;

  std::vector<SkipRecord> skipped_records_;
  std::set<int64_t> skipped_seen_;
  int64_t skipped_total_ = 0;
};

}  // namespace data
