// pretrain.cpp: the MAE pre-training loop (AdamW, cosine schedule with warm-up, gradient accumulation,
// progress, metrics, checkpoints, exact resume, non-finite detection), on the CPU or on a CUDA GPU.
//
// One class, Pretraining, in the order a run goes: setup (the constructor: resume, checks, data, model, optimizer,
// run folder), the step (queue_step: forward, backward and optimizer queued on the device), settling and logging
// (settle, log_line: the one read-back of a log window), and the end of an epoch (end_epoch: metrics line, loss
// curve, checkpoint).
#include "moce/train/pretrain.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "data/loader.h"
#include "engine/backend.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/nvtx.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/rng.h"
#include "engine/stream.h"
#include "model/mae.h"
#include "moce/common/batch_feed.h"
#include "moce/common/cli.h"
#include "moce/common/clock.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/common/plot.h"
#include "moce/common/run_folder.h"
#include "moce/train/checkpoint.h"
#include "moce/train/pretrain_config.h"

namespace moce {

namespace {

using eng::Tensor;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// TF32 is a process-wide switch of the CUDA backend: on for this run only.
struct Tf32Scope {
  explicit Tf32Scope(bool on) { eng::set_cuda_tf32(on); }
  ~Tf32Scope() { eng::set_cuda_tf32(false); }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;
};

// The step never waits for the device: losses and gradient norms stay there until the next log line (on a GPU; on
// the CPU reading them is free, so every step is checked at once). A non-finite gradient norm makes the optimizer
// leave the weights alone (AdamW::step(norm, clip)), and settle() then stops the run before anything is saved,
// naming the first bad step.
struct PendingStep {
  int64_t s = 0;                // step within the epoch
  std::vector<Tensor> losses;   // one 0-d loss per micro-batch, on the device (with any auxiliary terms)
  std::vector<Tensor> recon;    // the MAE reconstruction loss alone, per micro-batch
  std::vector<Tensor> indices;  // each micro-batch's dataset indices, for the message
  Tensor grad_norm;             // 0-d f64, pre-clip, on the device
};

// The sums of one epoch and of its current log window.
struct EpochTotals {
  double epoch_loss = 0, window_loss = 0, gnorm = 0;
  double epoch_recon = 0, window_recon = 0;  // the reconstruction term alone (differs under moce train's methods)
  int64_t window_steps = 0, window_images = 0;
  Clock::time_point t_window = Clock::now();
};

class Pretraining {
 public:
  Pretraining(const PretrainOptions& options, const PretrainSession& session);
  PretrainResult run();

 private:
  void load_resume_checkpoint();
  eng::DType check_options();
  void resolve_base_lr();
  void build_model(eng::DType compute_dtype);
  void build(eng::DType compute_dtype);
  void note_schedule_change() const;
  void open_run_folder();
  bool run_epoch(int64_t epoch, EpochTotals& t);
  PendingStep queue_step(int64_t epoch, int64_t s, EpochTotals& t);
  bool settle(int64_t epoch, EpochTotals& t);
  void log_line(int64_t epoch, int64_t s, EpochTotals& t);
  void end_epoch(int64_t epoch, const EpochTotals& t);
  PlotText loss_plot_text() const;
  std::string last_checkpoint_note() const;
  std::string experts_note() const;

  // Declared in the order the run makes them, so that they go in the reverse order (the feed before its loader, the
  // TF32 switch last).
  PretrainOptions o_;
  const PretrainSession session_;
  PretrainResult result_;
  eng::Checkpoint ckpt_;
  const bool resuming_;
  std::string ckpt_path_, device_context_;
  eng::Device device_;
  std::unique_ptr<Tf32Scope> tf32_;
  bool profiling_ = false;
  model::MaeConfig cfg_;
  std::shared_ptr<const data::Dataset> ds_;
  std::unique_ptr<data::Loader> loader_;
  int64_t steps_per_epoch_ = 0;  // micro-batches past the last full step of an epoch are not used
  std::unique_ptr<BatchFeed> feed_;
  TrainMethod method_ = TrainMethod::Mae;
  std::unique_ptr<model::MaskedAutoencoder> mae_;
  std::unique_ptr<ExpertTraining> experts_;  // moce train's moce / tokenmoe: layers, teacher, clusters, losses
  double lr_ = 0;
  std::unique_ptr<eng::AdamW> opt_;
  eng::CosineSchedule sched_;
  std::vector<Tensor> params_;
  int64_t start_epoch_ = 0, end_epoch_ = 0;
  int64_t saved_epochs_ = 0;  // on resume: the run's --epochs before this session
  std::unique_ptr<RunLock> lock_;  // held from before anything is written until the run object goes
  json config_json_;
  json init_config_;  // moce train: the --init file's metadata config
  Series curve_;  // the loss curve (loss.png) of the whole run, also across resumes
  std::unique_ptr<MetricsLog> metrics_;
  Clock::time_point t_run_;
  int64_t images_this_run_ = 0;
  std::string last_ckpt_;
  bool check_every_step_ = false;
  bool light_resume_ = false;  // resumed from a checkpoint without optimizer state
  std::vector<PendingStep> pending_;
};

// ---------------------------------------------------------------- setup

Pretraining::Pretraining(const PretrainOptions& options, const PretrainSession& session)
    : o_(options), session_(session), resuming_(!session.resume.empty()) {
  // Everything that can be checked, the data included, before a file is touched; then the lock, so that a second run
  // on the folder stops before it writes anything; then the refusal to write over another run's records.
  if (resuming_) load_resume_checkpoint();
  const eng::DType compute_dtype = check_options();
  ds_ = limit_dataset(open_dataset(o_.data, true), o_.limit);
  make_run_dir(o_.out);
  lock_ = std::make_unique<RunLock>(o_.out);
  if (!resuming_) refuse_other_run(o_.out, session_.force, method_ == TrainMethod::Mae ? "pretrain" : "train");
  build(compute_dtype);
  open_run_folder();
}

void Pretraining::load_resume_checkpoint() {
  const std::string& dir = session_.resume;
  ckpt_path_ = dir + "/" + kLastCheckpointName;
  ckpt_ = load_run_checkpoint(dir);  // verified; a damaged one is refused, naming checkpoint-prev
  ENG_CHECK(ckpt_.config.contains("run"), "{}: checkpoint has no run configuration", ckpt_path_);
  try {
    o_ = options_from_json(ckpt_.config["run"]);
  } catch (const eng::Error& e) {  // options_from_json's "run config: <what>", a missing key or a wrong type
    std::string what = e.what();
    if (what.rfind("run config: ", 0) == 0) what = what.substr(12);
    ENG_FAIL("--resume {}: {}'s run config: {}", dir, ckpt_path_, what);
  }
  o_.out = dir;
  saved_epochs_ = o_.epochs;
  if (session_.epochs > 0) o_.epochs = session_.epochs;
  // The same rules as the flags: a saved config edited by hand (or by a bug) is named here, not deep in the run.
  try {
    validate_options(o_);
  } catch (const eng::Error& e) {
    ENG_FAIL("--resume {}: {}'s run config: {}", dir, ckpt_path_, e.what());
  }
  if (!session_.device.empty())
    o_.device = session_.device;
  else
    device_context_ = fmt::format(" (saved in {}; pass --device to resume elsewhere)", ckpt_path_);
}

// Every flag, before any data is read or anything is written; the device first, so that a missing GPU is reported
// before anything else. Returns the compute dtype that --precision names.
eng::DType Pretraining::check_options() {
  device_ = device_from_flag(o_.device, device_context_);
  method_ = parse_train_method(o_.method);
  if (!resuming_) validate_options(o_);
  check_at_least("--stop-after", session_.stop_after, int64_t(0));
  if (method_ != TrainMethod::Mae && !resuming_) {
    ENG_CHECK(!o_.init.empty(), "--init: moce train continues a dense MAE; pass its checkpoint or weights file");
    ENG_CHECK(file_exists(o_.init), "--init {}: no such file", o_.init);
    ENG_CHECK(method_ == TrainMethod::Moce || o_.clusters.empty(), "--clusters is for --method moce only");
    ENG_CHECK(method_ != TrainMethod::Moce || !o_.clusters.empty(),
              "--method moce needs --clusters CLUSTER_DIR (a `moce cluster` output folder of the same data)");
    resolve_base_lr();
    validate_options(o_);  // --min-lr against the learning rate now that the base one is known
  }
  eng::DType compute_dtype = eng::DType::F32;
  try {
    compute_dtype = model::parse_precision(o_.precision);
  } catch (const eng::Error& e) {
    ENG_FAIL("--precision {}: {}", o_.precision, e.what());
  }
  ENG_CHECK(compute_dtype == eng::DType::F32 || device_.is_cuda(),
            "--precision {}: bf16 mixed precision needs --device cuda (the CPU backend has no bf16 arithmetic)", o_.precision);
  const bool tf32 = o_.precision == "tf32";
  ENG_CHECK(!tf32 || device_.is_cuda(), "--precision tf32: TF32 tensor-core GEMMs need --device cuda (the CPU computes f32)");
  tf32_ = std::make_unique<Tf32Scope>(tf32);
  profiling_ = session_.profile_first >= 0;
  ENG_CHECK(!profiling_ || device_.is_cuda(), "--profile-steps brackets CUDA work for a GPU profiler; it needs --device cuda");
  if (resuming_) {
    cfg_ = model::mae_config_from_json(ckpt_.config.at("model"), ckpt_path_ + " (metadata config[\"model\"])");
  } else if (method_ == TrainMethod::Mae) {
    cfg_ = model::mae_config(o_.config);
  } else {
    cfg_ = model::mae_config_from_json(init_config_.at("model"), "--init " + o_.init + " (metadata config[\"model\"])");
    o_.config = cfg_.name;
  }
  cfg_.norm_pix_loss = o_.norm_pix_loss;
  return compute_dtype;
}

// moce train: the --init file's metadata config (its model, and the run that made it), and without --base-lr that
// run's base learning rate times 0.1 (the paper's rule).
void Pretraining::resolve_base_lr() {
  eng::SafetensorsFile f = eng::load_safetensors(o_.init);
  auto it = f.metadata.find("config");
  ENG_CHECK(it != f.metadata.end(), "--init {}: no model config in its metadata (not a moce MAE file)", o_.init);
  init_config_ = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  ENG_CHECK(init_config_.is_object() && init_config_.contains("model"),
            "--init {}: its metadata config is not a moce model config", o_.init);
  if (init_config_.contains("run") && init_config_["run"].value("method", "mae") != "mae")
    ENG_CHECK(false, "--init {}: a `moce train` {} model; continue a dense MAE (a moce pretrain output)", o_.init,
              init_config_["run"].value("method", "?"));
  if (o_.base_lr >= 0) return;
  double init_base_lr = 1.5e-4;  // MAE's, when the file does not say
  if (init_config_.contains("run") && init_config_["run"].contains("base_lr"))
    init_base_lr = init_config_["run"]["base_lr"].get<double>();
  o_.base_lr = 0.1 * init_base_lr;
}

// Data, model and optimizer; on resume their state from the checkpoint.
void Pretraining::build(eng::DType compute_dtype) {
  data::LoaderOptions lo;
  lo.batch_size = o_.batch;
  lo.seed = o_.seed;
  lo.num_workers = int(o_.workers);
  lo.strict = o_.strict;
  loader_ = std::make_unique<data::Loader>(ds_, data::mae_pretrain_pipeline(cfg_.img_size), lo);
  const int64_t bpe = loader_->batches_per_epoch();
  ENG_CHECK(bpe >= o_.accum, "{} images give {} batches of {} per epoch, fewer than --accum-iter {}", ds_->size(), bpe,
            o_.batch, o_.accum);
  steps_per_epoch_ = bpe / o_.accum;
  feed_ = std::make_unique<BatchFeed>(*loader_, device_);

  build_model(compute_dtype);
  auto named = mae_->named_parameters();
  lr_ = o_.base_lr * double(o_.batch * o_.accum) / 256.0;
  // As MAE (timm add_weight_decay): only 1-D parameters and biases skip weight decay; tokens decay.
  opt_ = std::make_unique<eng::AdamW>(eng::param_groups_weight_decay(named, o_.weight_decay, {}),
                                      eng::AdamWOptions{lr_, 0.9, 0.95, 1e-8, o_.weight_decay});
  sched_ = eng::CosineSchedule{lr_, o_.min_lr, double(o_.warmup_epochs * steps_per_epoch_),
                               double(o_.epochs * steps_per_epoch_)};
  for (auto& [n, p] : named) params_.push_back(p);

  if (resuming_) {
    ckpt_.weights.erase(kCentroidsTensor);  // read again from --clusters (the same values)
    eng::check_state_matches(mae_->state_dict(), ckpt_.weights, ckpt_path_);
    mae_->load_state_dict(ckpt_.weights, ckpt_path_);  // copies onto the model's device
    start_epoch_ = ckpt_.rng.at("next_epoch");
    // A light checkpoint (weights, config and position, no optimizer state: what carries a long run between machines
    // in a small file, results/README.md) restarts AdamW's moments; the schedule goes on where it was.
    light_resume_ = ckpt_.optimizer_state.empty() && !(ckpt_.optimizer.is_object() && ckpt_.optimizer.contains("type"));
    if (light_resume_)
      std::printf("note: %s holds no optimizer state (a light checkpoint): AdamW's moments start again at epoch %lld; "
                  "the run is no longer bit for bit an uninterrupted one\n", ckpt_path_.c_str(), (long long)start_epoch_ + 1);
    else
      opt_->load_state_dict(eng::OptimizerState{ckpt_.optimizer_state, ckpt_.optimizer});
    ENG_CHECK(start_epoch_ <= o_.epochs, "{}: the run already finished {} epochs; pass a larger --epochs to go on",
              ckpt_path_, start_epoch_);
    // --stop-after counts epochs of the whole run: one already reached would stop before the first step, doing nothing.
    ENG_CHECK(session_.stop_after == 0 || session_.stop_after > start_epoch_,
              "--stop-after {}: the run already finished {} epochs ({}); expected 0 or a number above {}",
              session_.stop_after, start_epoch_, ckpt_path_, start_epoch_);
    ckpt_ = eng::Checkpoint();  // its host tensors are on the device now
    note_schedule_change();
  }
  result_.epochs_done = start_epoch_;
  end_epoch_ = session_.stop_after > 0 ? std::min(o_.epochs, session_.stop_after) : o_.epochs;
  last_ckpt_ = resuming_ ? ckpt_path_ : "";
  check_every_step_ = device_.is_cpu();
}

// --epochs with --resume rebuilds the cosine schedule over the new length: the steps already taken followed the old
// one, so the run goes on on another curve than an uninterrupted run of either length. Allowed (it is how a run is
// lengthened) but said, with the step and the learning rate there.
void Pretraining::note_schedule_change() const {
  if (o_.epochs == saved_epochs_) return;
  const int64_t step = start_epoch_ * steps_per_epoch_;
  const eng::CosineSchedule old_sched{lr_, o_.min_lr, double(o_.warmup_epochs * steps_per_epoch_),
                                      double(std::max(saved_epochs_, o_.warmup_epochs) * steps_per_epoch_)};
  std::fprintf(stderr,
               "note: --epochs %lld with --resume: the cosine schedule of this %lld-epoch run is %s to %lld epochs from "
               "step %lld on (lr there %.4g instead of %.4g); an uninterrupted %lld-epoch run "
               "would differ\n",
               (long long)o_.epochs, (long long)saved_epochs_, o_.epochs > saved_epochs_ ? "stretched" : "shortened",
               (long long)o_.epochs, (long long)step + 1, sched_.lr(double(step)),
               old_sched.lr(double(std::min(step, saved_epochs_ * steps_per_epoch_))), (long long)o_.epochs);
}

// The model, initialised on the CPU (the same weights for every device), then moved to the device: MAE pre-training
// starts at the seeded initialisation; moce train from the --init weights (on resume the checkpoint's replace them),
// with the method's expert layers installed before anything moves.
void Pretraining::build_model(eng::DType compute_dtype) {
  if (method_ == TrainMethod::Mae || resuming_)
    mae_ = std::make_unique<model::MaskedAutoencoder>(cfg_, o_.seed);
  else
    mae_ = std::make_unique<model::MaskedAutoencoder>(load_mae(o_.init, "", false, o_.seed));
  mae_->cfg_.norm_pix_loss = o_.norm_pix_loss;
  if (method_ == TrainMethod::Moce && !resuming_) o_.experts.cluster_pool = cluster_folder_pool(o_.clusters);
  if (has_experts(method_))
    experts_ = std::make_unique<ExpertTraining>(*mae_, method_, o_.experts, o_.init, o_.clusters, *ds_, o_.seed);
  move_to_device(*mae_, device_);
  if (experts_) experts_->to(device_);
  mae_->set_compute_dtype(compute_dtype);
}

// config.json, metrics.jsonl and, on resume, the loss curve up to the checkpoint.
void Pretraining::open_run_folder() {
  if (!resuming_ && session_.force) remove_run_records(o_.out);  // no file of the replaced run beside the new one's
  config_json_ = {{"run", options_to_json(o_)}, {"model", model::config_to_json(cfg_)}};
  write_json_file(o_.out + "/config.json", config_json_);
  metrics_ = std::make_unique<MetricsLog>(o_.out, resuming_ ? start_epoch_ : -1);
  if (light_resume_) metrics_->append(json{{"epoch", start_epoch_}, {"note", "resumed from a light checkpoint: AdamW moments restarted"}});
  const int64_t done_steps = start_epoch_ * steps_per_epoch_;
  for (const json& j : metrics_->earlier()) {
    if (j.contains("loss") && j.contains("step") && j["step"].get<int64_t>() <= done_steps) {
      curve_.x.push_back(j["step"].get<double>());
      curve_.y.push_back(j.contains("mae_loss") ? j["mae_loss"].get<double>() : j["loss"].get<double>());
    }
  }
}

// ---------------------------------------------------------------- the run

PretrainResult Pretraining::run() {
  std::printf("%s %s: %s, %lld parameters; %s; %lld steps/epoch of %lld x %lld images; lr %.3g; out %s%s\n",
              method_ == TrainMethod::Mae ? "pretrain" : fmt::format("train {}{}", train_method_name(method_), experts_note()).c_str(),
              cfg_.name.c_str(), device_.str().c_str(), (long long)mae_->num_parameters(), ds_->describe().c_str(),
              (long long)steps_per_epoch_, (long long)o_.accum, (long long)o_.batch, lr_, o_.out.c_str(),
              resuming_ ? fmt::format(" (resumed at epoch {})", start_epoch_ + 1).c_str() : "");
  std::fflush(stdout);
  t_run_ = Clock::now();
  for (int64_t epoch = start_epoch_; epoch < end_epoch_; epoch++) {
    EpochTotals totals;
    if (!run_epoch(epoch, totals)) {
      result_.status = 2;
      return result_;
    }
    end_epoch(epoch, totals);
  }
  if (end_epoch_ < o_.epochs) {
    std::printf("stopped after epoch %lld of %lld as asked; continue with: moce %s --resume %s\n",
                (long long)end_epoch_, (long long)o_.epochs, method_ == TrainMethod::Mae ? "pretrain" : "train",
                o_.out.c_str());
    return result_;
  }
  // The run's options travel with the weights: moce train's later commands rebuild the method's model from them.
  std::map<std::string, Tensor> weights = host_copies(mae_->state_dict());
  if (experts_)
    for (const auto& [name, t] : experts_->extra_state()) weights[name] = t;
  eng::save_safetensors(o_.out + "/weights.safetensors", weights,
                        {{"config", json{{"model", model::config_to_json(cfg_)}, {"run", options_to_json(o_)}}.dump()},
                         {"format", "moce-weights-v1"}});
  std::printf("done: weights %s/weights.safetensors, checkpoint %s/checkpoint-last.safetensors, metrics %s/metrics.jsonl, "
              "loss curve %s/loss.png\n", o_.out.c_str(), o_.out.c_str(), o_.out.c_str(), o_.out.c_str());
  return result_;
}

// False when the epoch stopped on a non-finite loss or gradient norm (reported on stderr).
bool Pretraining::run_epoch(int64_t epoch, EpochTotals& t) {
  feed_->start_epoch(epoch, steps_per_epoch_ * o_.accum);
  t.t_window = Clock::now();
  for (int64_t s = 0; s < steps_per_epoch_; s++) {
    const int64_t step = epoch * steps_per_epoch_ + s;  // optimizer step, global
    if (profiling_ && step == session_.profile_first) eng::profiler_start(device_);
    pending_.push_back(queue_step(epoch, s, t));
    if (profiling_ && step == session_.profile_last) eng::profiler_stop(device_);
    const bool log_now = (s + 1) % o_.log_every == 0 || s + 1 == steps_per_epoch_;
    if ((check_every_step_ || log_now) && !settle(epoch, t)) return false;
    if (log_now) log_line(epoch, s, t);
  }
  return true;
}

// One optimizer step of o.accum micro-batches, queued on the device; nothing is read back.
PendingStep Pretraining::queue_step(int64_t epoch, int64_t s, EpochTotals& t) {
  ENG_NVTX_RANGE("pretrain.step");
  const int64_t step = epoch * steps_per_epoch_ + s;
  const int64_t L = cfg_.num_patches();
  PendingStep ps;
  ps.s = s;
  opt_->set_lr(sched_.lr(double(step)));
  for (int64_t m = 0; m < o_.accum; m++) {
    data::Batch b;
    ENG_CHECK(feed_->next(b), "internal: loader ended early in epoch {}", epoch);
    int64_t micro = step * o_.accum + m;  // keys the mask noise
    eng::Generator mask_rng(o_.seed, kMaskStream, uint64_t(micro) * uint64_t(o_.batch * L));
    // Philox uniforms are bitwise the same on every device: the masks do not depend on it.
    Tensor noise = mask_rng.uniform({b.images.size(0), L}, 0.0, 1.0, eng::DType::F32, device_);
    model::MaeOutput out;
    Tensor loss;
    {
      ENG_NVTX_RANGE("pretrain.forward");
      if (experts_) experts_->before_forward(b, uint64_t(micro));
      out = mae_->forward(b.images, noise, o_.mask_ratio);
      loss = out.loss;
      if (experts_) {
        Tensor extra = experts_->extra_loss(out, b.images, noise, o_.mask_ratio);
        if (extra.defined()) loss = eng::add(loss, extra);
      }
    }
    // While the GPU runs the forward pass just queued: the next batch into pinned memory, its copy queued.
    feed_->prefetch();
    {
      ENG_NVTX_RANGE("pretrain.backward");
      (o_.accum > 1 ? eng::mul(loss, 1.0 / double(o_.accum)) : loss).backward();
    }
    ps.losses.push_back(loss.detach());
    ps.recon.push_back(experts_ ? out.loss.detach() : Tensor());
    ps.indices.push_back(b.indices);
    t.window_images += b.images.size(0);
  }
  {
    ENG_NVTX_RANGE("pretrain.optimizer");
    ps.grad_norm = eng::grad_norm_tensor(params_);
    opt_->step(ps.grad_norm, o_.clip);  // clips on the device when o.clip > 0
    opt_->zero_grad();
  }
  return ps;
}

// " (8 experts in blocks 10, 11)" for the run's first line.
std::string Pretraining::experts_note() const {
  if (!experts_) return "";
  std::string blocks;
  for (int64_t b : experts_->blocks()) blocks += (blocks.empty() ? "" : ", ") + std::to_string(b);
  return fmt::format(" ({} experts, top-{}, in blocks {})", o_.experts.num_experts, o_.experts.top_k, blocks);
}

std::string Pretraining::last_checkpoint_note() const {
  return last_ckpt_.empty() ? "no checkpoint was written yet" : "last good checkpoint: " + last_ckpt_;
}

// Reads the pending steps (the one sync of a log window), checks them in order, adds them up; false after reporting
// a non-finite loss or gradient norm.
bool Pretraining::settle(int64_t epoch, EpochTotals& t) {
  for (PendingStep& ps : pending_) {
    const int64_t step = epoch * steps_per_epoch_ + ps.s;
    double step_loss = 0;
    for (size_t m = 0; m < ps.losses.size(); m++) {
      const double lv = ps.losses[m].item();
      if (!std::isfinite(lv)) {
        data::Batch b;
        b.indices = ps.indices[m];
        std::fprintf(stderr, "error: non-finite loss %g at epoch %lld step %lld (micro-batch %lld); images: %s; %s\n", lv,
                     (long long)epoch + 1, (long long)step + 1, (long long)m, loader_->batch_ids(b).c_str(),
                     last_checkpoint_note().c_str());
        return false;
      }
      step_loss += lv / double(o_.accum);
    }
    double step_recon = step_loss;
    if (experts_) {
      step_recon = 0;
      for (const Tensor& r : ps.recon) step_recon += r.item() / double(o_.accum);
    }
    t.gnorm = ps.grad_norm.item();
    if (!std::isfinite(t.gnorm)) {
      std::fprintf(stderr, "error: non-finite gradient norm at epoch %lld step %lld (loss %g); %s\n", (long long)epoch + 1,
                   (long long)step + 1, step_loss, last_checkpoint_note().c_str());
      return false;
    }
    result_.step_losses.push_back(step_loss);
    t.epoch_loss += step_loss;
    t.window_loss += step_loss;
    t.epoch_recon += step_recon;
    t.window_recon += step_recon;
    t.window_steps++;
  }
  pending_.clear();
  return true;
}

// The progress line and the metrics line of the log window that ends with step s; starts the next window.
void Pretraining::log_line(int64_t epoch, int64_t s, EpochTotals& t) {
  const int64_t step = epoch * steps_per_epoch_ + s;
  double dt = seconds_since(t.t_window);
  images_this_run_ += t.window_images;
  double ips = double(t.window_images) / std::max(dt, 1e-9);
  double run_s = seconds_since(t_run_);
  int64_t steps_left = (o_.epochs - epoch) * steps_per_epoch_ - (s + 1);
  double eta = double(steps_left * o_.accum * o_.batch) / std::max(double(images_this_run_) / run_s, 1e-9);
  const double window_mean = t.window_loss / double(t.window_steps);
  const double window_recon = t.window_recon / double(t.window_steps);
  json line = {{"epoch", epoch + 1}, {"step", step + 1}, {"loss", window_mean}, {"lr", opt_->lr()},
               {"grad_norm", t.gnorm}, {"images_per_s", ips}};
  std::string extra;
  if (method_ != TrainMethod::Mae) {
    line["mae_loss"] = window_recon;
    extra = fmt::format("  mae {:.4f}", window_recon);
  }
  if (experts_) {
    line.update(experts_->take_window_metrics());
    extra += experts_->progress_suffix();
  }
  std::printf("epoch %lld/%lld  step %lld/%lld  loss %.4f%s  lr %.3e  %.1f img/s  ETA %s\n", (long long)epoch + 1,
              (long long)o_.epochs, (long long)s + 1, (long long)steps_per_epoch_, window_mean, extra.c_str(),
              opt_->lr(), ips, fmt_duration(eta).c_str());
  std::fflush(stdout);
  metrics_->append(line);
  // The curve is the reconstruction loss, comparable between pre-training and every method of moce train.
  curve_.x.push_back(double(step + 1));
  curve_.y.push_back(window_recon);
  t.window_recon = 0;
  t.window_loss = 0;
  t.window_steps = 0;
  t.window_images = 0;
  t.t_window = Clock::now();
}

// loss.png's titles: what is trained and what the curve is (the reconstruction part of the loss, the mean over each
// --log-every window; the auxiliary and distillation terms of an expert method are in metrics.jsonl).
PlotText Pretraining::loss_plot_text() const {
  const std::string what = method_ == TrainMethod::Mae ? std::string("MAE PRE-TRAINING")
                                                       : fmt::format("{} TRAINING FROM THE MAE", train_method_name(method_));
  return {what + ": RECONSTRUCTION LOSS", "STEP",
          fmt::format("MSE ON REMOVED PATCHES{}", mae_->config().norm_pix_loss ? " (NORMALISED PIXELS)" : "")};
}

// The epoch's metrics line, the loss curve, and a checkpoint every --save-every epochs and at the end.
void Pretraining::end_epoch(int64_t epoch, const EpochTotals& t) {
  double mean_loss = t.epoch_loss / double(steps_per_epoch_);
  // Full precision so that a resumed run can be compared with an uninterrupted one bit for bit.
  json line = {{"epoch", epoch + 1}, {"train_loss", mean_loss}, {"train_loss_hex", fmt::format("{:a}", mean_loss)},
               {"skipped_images", loader_->skipped()}};
  if (method_ != TrainMethod::Mae) line["train_mae_loss"] = t.epoch_recon / double(steps_per_epoch_);
  metrics_->append(line);
  if (loader_->skipped() > 0) std::printf("%s\n", loader_->skip_summary().c_str());
  write_line_plot(o_.out + "/loss.png", {curve_}, loss_plot_text(), 800, 500);
  result_.epochs_done = epoch + 1;
  if ((epoch + 1) % o_.save_every == 0 || epoch + 1 == end_epoch_) {
    last_ckpt_ = o_.out + "/" + kLastCheckpointName;
    keep_previous_checkpoint(o_.out);  // the last becomes checkpoint-prev: a damaged new one leaves a way back
    save_pretrain_checkpoint(last_ckpt_, *mae_, *opt_, config_json_, o_.seed, epoch + 1,
                             experts_ ? experts_->extra_state() : std::map<std::string, Tensor>{});
    std::printf("epoch %lld done: mean loss %.4f; checkpoint %s\n", (long long)epoch + 1, mean_loss, last_ckpt_.c_str());
  } else {
    std::printf("epoch %lld done: mean loss %.4f\n", (long long)epoch + 1, mean_loss);
  }
  std::fflush(stdout);
}

}  // namespace

PretrainResult pretrain(const PretrainOptions& options, const PretrainSession& session) {
  return Pretraining(options, session).run();
}

}  // namespace moce
