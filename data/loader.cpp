// loader.cpp: epoch order, sharding, batch assembly with corrupt-image skipping, and the worker threads.
#include "data/loader.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"
#include "engine/rng.h"

namespace data {

Loader::Loader(std::shared_ptr<const Dataset> dataset, Pipeline pipeline, LoaderOptions options)
    : dataset_(std::move(dataset)), pipeline_(std::move(pipeline)), options_(options) {
  ENG_CHECK(dataset_ != nullptr, "Loader: no dataset");
  const LoaderOptions& o = options_;
  ENG_CHECK(o.batch_size > 0, "Loader: batch_size must be > 0, got {}", o.batch_size);
  ENG_CHECK(o.world_size > 0 && o.rank >= 0 && o.rank < o.world_size, "Loader: rank {} of world size {} is invalid",
            o.rank, o.world_size);
  ENG_CHECK(o.num_workers >= 0 && o.num_workers <= 256, "Loader: num_workers must be in [0, 256], got {}",
            o.num_workers);
  ENG_CHECK(o.prefetch >= 0, "Loader: prefetch must be >= 0, got {}", o.prefetch);
  if (options_.prefetch == 0) options_.prefetch = 2 * std::max(o.num_workers, 1);
  const int64_t n = dataset_->size(), w = o.world_size;
  ENG_CHECK(n > 0, "Loader: {} is empty", dataset_->describe());
  samples_per_rank_ = o.drop_last ? n / w : (n + w - 1) / w;
  ENG_CHECK(samples_per_rank_ > 0, "Loader: {} has {} images, fewer than the {} ranks", dataset_->describe(), n, w);
  batches_per_epoch_ = o.drop_last ? samples_per_rank_ / o.batch_size
                                   : (samples_per_rank_ + o.batch_size - 1) / o.batch_size;
  ENG_CHECK(batches_per_epoch_ > 0,
            "Loader: batch size {} is larger than the {} images of each rank with drop_last; no batch would come out "
            "({})",
            o.batch_size, samples_per_rank_, dataset_->describe());
}

Loader::~Loader() { stop_workers(); }

std::vector<int64_t> Loader::epoch_order(int64_t epoch) const {
  ENG_CHECK(epoch >= 0, "Loader: epoch must be >= 0, got {}", epoch);
  const int64_t n = dataset_->size();
  std::vector<int64_t> all(static_cast<size_t>(n));
  if (options_.shuffle) {
    eng::Generator gen(options_.seed, uint64_t(epoch));
    eng::Tensor perm = gen.permutation(n);
    const int64_t* p = perm.data<int64_t>();
    std::copy(p, p + n, all.begin());
  } else {
    for (int64_t i = 0; i < n; i++) all[size_t(i)] = i;
  }
  const int64_t w = options_.world_size, r = options_.rank;
  std::vector<int64_t> mine(static_cast<size_t>(samples_per_rank_));
  // Position r + i * W of the order truncated or padded (by wrapping to its start) to S * W entries.
  for (int64_t i = 0; i < samples_per_rank_; i++) mine[size_t(i)] = all[size_t((r + i * w) % n)];
  return mine;
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  ENG_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch_, "Loader: first_batch {} outside [0, {}]",
            first_batch, batches_per_epoch_);
  stop_workers();
  order_ = epoch_order(epoch);
  epoch_ = epoch;
  epoch_started_ = true;
  epoch_failed_ = false;
  skipped_records_.clear();
  skipped_seen_.clear();
  {
    std::lock_guard<std::mutex> lk(mu_);
    next_to_make_ = next_to_deliver_ = first_batch;
    done_.clear();
    stopping_ = false;
  }
  cancel_ = false;
  try {
    for (int i = 0; i < options_.num_workers; i++) workers_.emplace_back([this] { worker_loop(); });
  } catch (...) {
    stop_workers();  // could not start a thread: leave no half-started pool behind
    epoch_started_ = false;
    throw;
  }
}

void Loader::stop() { stop_workers(); epoch_started_ = false; }

void Loader::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cancel_ = true;
  cv_work_.notify_all();
  cv_ready_.notify_all();
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
  std::lock_guard<std::mutex> lk(mu_);
  done_.clear();
}

void Loader::worker_loop() {
  // Never lets an exception escape: errors travel to the consumer inside the batch's slot.
  for (;;) {
    int64_t k;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_work_.wait(lk, [&] {
        return stopping_ || next_to_make_ >= batches_per_epoch_ || next_to_make_ < next_to_deliver_ + options_.prefetch;
      });
      if (stopping_ || next_to_make_ >= batches_per_epoch_) return;
      k = next_to_make_++;
    }
    Slot slot;
    try {
      slot.batch = make_batch(k);
    } catch (...) {
      slot.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return;
      done_[k] = std::move(slot);
    }
    cv_ready_.notify_all();
  }
}

bool Loader::next(Batch& out) {
  ENG_CHECK(epoch_started_, "Loader::next: call start_epoch(epoch) first");
  ENG_CHECK(!epoch_failed_, "Loader::next: epoch {} was stopped by an earlier error; call start_epoch to go on", epoch_);
  int64_t k;
  {
    std::lock_guard<std::mutex> lk(mu_);
    k = next_to_deliver_;
  }
  if (k >= batches_per_epoch_) {
    stop_workers();  // they have all finished by now; this only joins them
    return false;
  }
  Slot slot;
  if (workers_.empty()) {
    try {
      slot.batch = make_batch(k);
    } catch (...) {
      slot.error = std::current_exception();
    }
  } else {
    std::unique_lock<std::mutex> lk(mu_);
    cv_ready_.wait(lk, [&] { return done_.count(k) > 0; });
    slot = std::move(done_[k]);
    done_.erase(k);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    next_to_deliver_ = k + 1;
  }
  cv_work_.notify_all();
  if (slot.error) {
    epoch_failed_ = true;
    stop_workers();
    std::rethrow_exception(slot.error);
  }
  for (const SkipRecord& s : slot.batch.skipped) {
    if (skipped_seen_.insert(s.index).second) {
      skipped_records_.push_back(s);
      skipped_total_++;
    }
  }
  out = std::move(slot.batch);
  return true;
}

Batch Loader::make_batch(int64_t k) const {
  const Dataset& ds = *dataset_;
  const int64_t n = int64_t(order_.size());
  const int64_t start = k * options_.batch_size, end = std::min(start + options_.batch_size, n);
  const int64_t count = end - start;
  Batch b;
  b.epoch = epoch_;
  b.batch = k;
  std::vector<eng::Tensor> images(static_cast<size_t>(count));
  std::vector<int64_t> labels(static_cast<size_t>(count)), indices(static_cast<size_t>(count));
  std::vector<std::string> ids(static_cast<size_t>(count));
  int64_t spare = end;      // next replacement position in this rank's list (wraps)
  int64_t tries_left = n;   // a batch gives up once it has tried as many images as the rank has
  for (int64_t slot = 0; slot < count; slot++) {
    if (cancel_) return b;  // stopping: the caller throws this batch away
    int64_t pos = start + slot;
    for (;;) {
      const int64_t idx = order_[size_t(pos % n)];
      try {
        Sample s = ds.get(idx);
        images[size_t(slot)] = pipeline_.apply(s.image, options_.seed, epoch_, idx);
        labels[size_t(slot)] = s.label;
        indices[size_t(slot)] = idx;
        ids[size_t(slot)] = std::move(s.id);
        break;
      } catch (const CorruptImage& e) {
        if (options_.strict) throw;
        b.skipped.push_back({idx, ds.id(idx), e.what()});
        ENG_CHECK(--tries_left > 0, "Loader: batch {} of epoch {}: every one of the {} images tried is corrupt (last: {})",
                  k, epoch_, n, e.what());
        pos = spare++;
      } catch (const eng::Error& e) {
        // Name the image unless the message already does (decode errors name their file).
        const std::string id = ds.id(idx);
        if (std::strstr(e.what(), id.c_str()) != nullptr) throw;
        throw eng::Error(fmt::format("{}: {}", id, e.what()));
      }
    }
  }
  const eng::Shape& shape = images[0].shape();
  for (int64_t i = 1; i < count; i++)
    ENG_CHECK(images[size_t(i)].shape() == shape,
              "Loader: batch {} mixes image sizes: {} is {} after the pipeline, {} is {}; add a Resize or "
              "RandomResizedCrop to the pipeline",
              k, ids[0], eng::shape_str(shape), ids[size_t(i)], eng::shape_str(images[size_t(i)].shape()));
  ENG_CHECK(images[0].dtype() == eng::DType::F32 && images[0].device().is_cpu(),
            "Loader: the pipeline made a {} for {}; expected f32 on the CPU", images[0].str(), ids[0]);
  eng::Shape batch_shape = shape;
  batch_shape.insert(batch_shape.begin(), count);
  b.images = eng::Tensor::empty(batch_shape);
  float* dst = b.images.data<float>();
  const int64_t per = eng::shape_numel(shape);
  for (int64_t i = 0; i < count; i++) {
    eng::Tensor img = images[size_t(i)].contiguous();
    std::memcpy(dst + i * per, img.data<float>(), size_t(per) * sizeof(float));
  }
  b.labels = eng::Tensor::from_vector(labels, {count});
  b.indices = eng::Tensor::from_vector(indices, {count});
  return b;
}

std::vector<std::string> Loader::skipped_ids() const {
  std::vector<std::string> ids;
  for (const SkipRecord& s : skipped_records_) ids.push_back(s.id);
  return ids;
}

std::string Loader::skip_summary(size_t max_listed) const {
  std::string s = fmt::format("epoch {}: {} corrupt image{} skipped", epoch_, skipped_records_.size(),
                              skipped_records_.size() == 1 ? "" : "s");
  for (size_t i = 0; i < skipped_records_.size() && i < max_listed; i++)
    s += (i ? "; " : ": ") + skipped_records_[i].reason;
  if (skipped_records_.size() > max_listed) s += fmt::format("; (+{} more)", skipped_records_.size() - max_listed);
  return s;
}

std::string Loader::batch_ids(const Batch& batch, size_t max_listed) const {
  std::vector<int64_t> idx = batch.indices.to_vector<int64_t>();
  std::string s;
  for (size_t i = 0; i < idx.size() && i < max_listed; i++) s += (i ? ", " : "") + dataset_->id(idx[i]);
  if (idx.size() > max_listed) s += fmt::format(" (+{} more)", idx.size() - max_listed);
  return s;
}

}  // namespace data
