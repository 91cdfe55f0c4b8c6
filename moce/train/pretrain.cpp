// pretrain.cpp: the MAE pre-training loop (AdamW, cosine schedule with warm-up, gradient accumulation,
// progress, metrics, checkpoints, exact resume, non-finite detection), on the CPU or on a CUDA GPU.
#include "moce/pretrain.h"

#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "data/loader.h"
#include "engine/backend.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/nvtx.h"
#include "engine/optim.h"
#include "model/mae.h"
#include "moce/cli.h"
#include "moce/device.h"
#include "moce/eval.h"
#include "moce/plot.h"
#ifdef ENGINE_WITH_CUDA
#include "engine/backends/cuda/cuda_stream.h"
#endif

namespace moce {

namespace {

using eng::Tensor;
using nlohmann::json;

constexpr uint64_t kMaskStream = 0x6d61736b;  // "mask": the mask-noise stream of the run's seed

json options_to_json(const PretrainOptions& o) {
  return {{"data", o.data},          {"config", o.config},       {"epochs", o.epochs},     {"batch", o.batch},
          {"accum_iter", o.accum},   {"save_every", o.save_every}, {"warmup_epochs", o.warmup_epochs},
          {"workers", o.workers},    {"limit", o.limit},         {"log_every", o.log_every}, {"base_lr", o.base_lr},
          {"min_lr", o.min_lr},      {"weight_decay", o.weight_decay}, {"mask_ratio", o.mask_ratio},
          {"clip_grad", o.clip},     {"seed", o.seed},           {"strict", o.strict},     {"norm_pix_loss", o.norm_pix_loss},
          {"device", o.device},      {"precision", o.precision}};
}

PretrainOptions options_from_json(const json& j) {
  PretrainOptions o;
  o.data = j.at("data");
  o.config = j.at("config");
  o.epochs = j.at("epochs");
  o.batch = j.at("batch");
  o.accum = j.at("accum_iter");
  o.save_every = j.at("save_every");
  o.warmup_epochs = j.at("warmup_epochs");
  o.workers = j.at("workers");
  o.limit = j.at("limit");
  o.log_every = j.at("log_every");
  o.base_lr = j.at("base_lr");
  o.min_lr = j.at("min_lr");
  o.weight_decay = j.at("weight_decay");
  o.mask_ratio = j.at("mask_ratio");
  o.clip = j.at("clip_grad");
  o.seed = j.at("seed");
  o.strict = j.at("strict");
  o.norm_pix_loss = j.at("norm_pix_loss");
  o.device = j.at("device");
  o.precision = j.value("precision", "f32");  // runs saved before --precision existed were f32
  return o;
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// mkdir -p
void make_dir(const std::string& d) {
  for (size_t pos = d.find('/', 1); pos != std::string::npos; pos = d.find('/', pos + 1))
    ::mkdir(d.substr(0, pos).c_str(), 0755);
  if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) ENG_FAIL("--out {}: cannot create the directory", d);
  struct stat st;
  ENG_CHECK(::stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "--out {}: not a directory", d);
}

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

void write_text_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    ENG_CHECK(f.good(), "{}: cannot write", tmp);
    f << text;
    ENG_CHECK(f.good(), "{}: write failed", tmp);
  }
  ENG_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename into place", path);
}

}  // namespace

PretrainResult pretrain(const PretrainOptions& options, const PretrainSession& session) {
  PretrainOptions o = options;
  PretrainResult result;
  eng::Checkpoint ckpt;
  const bool resuming = !session.resume.empty();
  std::string ckpt_path, device_context;
  if (resuming) {
    const std::string& dir = session.resume;
    ckpt_path = dir + "/checkpoint-last.safetensors";
    ENG_CHECK(file_exists(ckpt_path), "--resume {}: no checkpoint-last.safetensors there", dir);
    ckpt = eng::load_checkpoint(ckpt_path);
    ENG_CHECK(ckpt.config.contains("run"), "{}: checkpoint has no run configuration", ckpt_path);
    o = options_from_json(ckpt.config["run"]);
    o.out = dir;
    if (session.epochs > 0) o.epochs = session.epochs;
    if (!session.device.empty())
      o.device = session.device;
    else
      device_context = fmt::format(" (saved in {}; pass --device to resume elsewhere)", ckpt_path);
  }
  // First, so that a missing GPU is reported before any data is read or anything is written.
  const eng::Device device = device_from_flag(o.device, device_context);
  ENG_CHECK(o.epochs > 0, "--epochs must be positive, got {}", o.epochs);
  ENG_CHECK(o.batch > 0, "--batch must be positive, got {}", o.batch);
  ENG_CHECK(o.accum > 0, "--accum-iter must be positive, got {}", o.accum);
  ENG_CHECK(o.mask_ratio > 0 && o.mask_ratio < 1, "--mask-ratio must be in (0, 1), got {}", o.mask_ratio);
  ENG_CHECK(o.save_every > 0 && o.log_every > 0, "--save-every and --log-every must be positive");
  eng::DType compute_dtype = eng::DType::F32;
  try {
    compute_dtype = model::parse_precision(o.precision);
  } catch (const eng::Error& e) {
    ENG_FAIL("--precision {}: {}", o.precision, e.what());
  }
  ENG_CHECK(compute_dtype == eng::DType::F32 || device.is_cuda(),
            "--precision {}: bf16 mixed precision needs --device cuda (the CPU backend has no bf16 arithmetic)", o.precision);
  const bool tf32 = o.precision == "tf32";
  ENG_CHECK(!tf32 || device.is_cuda(), "--precision tf32: TF32 tensor-core GEMMs need --device cuda (the CPU computes f32)");
  // TF32 is a process-wide switch of the CUDA backend: on for this run only.
  struct Tf32Scope {
    explicit Tf32Scope(bool on) { eng::set_cuda_tf32(on); }
    ~Tf32Scope() { eng::set_cuda_tf32(false); }
  } tf32_scope(tf32);
  const bool profiling = session.profile_first >= 0;
  ENG_CHECK(!profiling || device.is_cuda(), "--profile-steps brackets CUDA work for a GPU profiler; it needs --device cuda");

  model::MaeConfig cfg = resuming ? model::mae_config_from_json(ckpt.config.at("model")) : model::mae_config(o.config);
  cfg.norm_pix_loss = o.norm_pix_loss;
  make_dir(o.out);

  // data
  std::shared_ptr<const data::Dataset> ds = open_dataset(o.data, true);
  if (o.limit > 0 && o.limit < ds->size()) {
    std::vector<int64_t> idx(static_cast<size_t>(o.limit));
    for (int64_t i = 0; i < o.limit; i++) idx[size_t(i)] = i;
    ds = std::make_shared<data::SubsetDataset>(ds, idx);
  }
  data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.seed = o.seed;
  lo.num_workers = int(o.workers);
  lo.strict = o.strict;
  data::Loader loader(ds, data::mae_pretrain_pipeline(cfg.img_size), lo);
  int64_t bpe = loader.batches_per_epoch();
  ENG_CHECK(bpe >= o.accum, "{} images give {} batches of {} per epoch, fewer than --accum-iter {}", ds->size(), bpe,
            o.batch, o.accum);
  int64_t steps_per_epoch = bpe / o.accum;  // micro-batches past the last full step of an epoch are not used
  BatchFeed feed(loader, device);

  // model and optimizer: initialised on the CPU (the same weights for every device), then moved to the device
  model::MaskedAutoencoder mae(cfg, o.seed);
  move_to_device(mae, device);
  mae.set_compute_dtype(compute_dtype);
  auto named = mae.named_parameters();
  double lr = o.base_lr * double(o.batch * o.accum) / 256.0;
  // As MAE (timm add_weight_decay): only 1-D parameters and biases skip weight decay; tokens decay.
  eng::AdamW opt(eng::param_groups_weight_decay(named, o.weight_decay, {}), eng::AdamWOptions{lr, 0.9, 0.95, 1e-8, o.weight_decay});
  eng::CosineSchedule sched{lr, o.min_lr, double(o.warmup_epochs * steps_per_epoch), double(o.epochs * steps_per_epoch)};
  std::vector<Tensor> params;
  for (auto& [n, p] : named) params.push_back(p);

  int64_t start_epoch = 0;
  if (resuming) {
    eng::check_state_matches(mae.state_dict(), ckpt.weights, ckpt_path);
    mae.load_state_dict(ckpt.weights, ckpt_path);  // copies onto the model's device
    opt.load_state_dict(eng::OptimizerState{ckpt.optimizer_state, ckpt.optimizer});
    start_epoch = ckpt.rng.at("next_epoch");
    ENG_CHECK(start_epoch <= o.epochs, "{}: the run already finished {} epochs; pass a larger --epochs to go on",
              ckpt_path, start_epoch);
    ckpt = eng::Checkpoint();  // its host tensors are on the device now
  }
  result.epochs_done = start_epoch;
  json config_json = {{"run", options_to_json(o)}, {"model", model::config_to_json(cfg)}};
  write_text_atomic(o.out + "/config.json", config_json.dump(2) + "\n");
  // The loss curve (loss.png) covers the whole run: on resume, the points up to the checkpoint come back
  // from metrics.jsonl (lines past it belong to the interrupted part and are dropped).
  Series curve;
  if (resuming) {
    std::ifstream old(o.out + "/metrics.jsonl");
    std::string line;
    int64_t done_steps = start_epoch * steps_per_epoch;
    while (std::getline(old, line)) {
      json j = json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("loss") && j.contains("step") && j["step"].get<int64_t>() <= done_steps) {
        curve.x.push_back(j["step"].get<double>());
        curve.y.push_back(j["loss"].get<double>());
      }
    }
  }
  std::ofstream metrics(o.out + "/metrics.jsonl", resuming ? std::ios::app : std::ios::trunc);
  ENG_CHECK(metrics.good(), "{}/metrics.jsonl: cannot write", o.out);

  std::printf("pretrain %s: %s, %lld parameters; %s; %lld steps/epoch of %lld x %lld images; lr %.3g; out %s%s\n",
              cfg.name.c_str(), device.str().c_str(), (long long)mae.num_parameters(), ds->describe().c_str(),
              (long long)steps_per_epoch, (long long)o.accum, (long long)o.batch, lr, o.out.c_str(),
              resuming ? fmt::format(" (resumed at epoch {})", start_epoch + 1).c_str() : "");
  std::fflush(stdout);

  const int64_t L = cfg.num_patches();
  auto t_run = std::chrono::steady_clock::now();
  int64_t images_this_run = 0;
  std::string last_ckpt = resuming ? ckpt_path : "";
  int64_t end_epoch = session.stop_after > 0 ? std::min(o.epochs, session.stop_after) : o.epochs;
  // The step never waits for the device: losses and gradient norms stay there until the next log line (on a
  // GPU; on the CPU reading them is free, so every step is checked at once). A non-finite gradient norm makes
  // the optimizer leave the weights alone (AdamW::step(norm, clip)), and the check below then stops the run
  // before anything is saved, naming the first bad step.
  const bool check_every_step = device.is_cpu();
  struct PendingStep {
    int64_t s = 0;                    // step within the epoch
    std::vector<Tensor> losses;       // one 0-d loss per micro-batch, on the device
    std::vector<Tensor> indices;      // each micro-batch's dataset indices, for the message
    Tensor grad_norm;                 // 0-d f64, pre-clip, on the device
  };
  std::vector<PendingStep> pending;
  for (int64_t epoch = start_epoch; epoch < end_epoch; epoch++) {
    feed.start_epoch(epoch, steps_per_epoch * o.accum);
    double epoch_loss = 0, window_loss = 0, gnorm = 0;
    int64_t window_steps = 0;
    auto t_window = std::chrono::steady_clock::now();
    int64_t window_images = 0;
    // Reads the pending steps (the one sync of a log window), checks them in order, adds them up; false after
    // reporting a non-finite loss or gradient norm.
    auto settle = [&]() -> bool {
      for (PendingStep& ps : pending) {
        const int64_t step = epoch * steps_per_epoch + ps.s;
        double step_loss = 0;
        for (size_t m = 0; m < ps.losses.size(); m++) {
          const double lv = ps.losses[m].item();
          if (!std::isfinite(lv)) {
            data::Batch b;
            b.indices = ps.indices[m];
            std::fprintf(stderr, "error: non-finite loss %g at epoch %lld step %lld (micro-batch %lld); images: %s; %s\n", lv,
                         (long long)epoch + 1, (long long)step + 1, (long long)m, loader.batch_ids(b).c_str(),
                         last_ckpt.empty() ? "no checkpoint was written yet" : ("last good checkpoint: " + last_ckpt).c_str());
            return false;
          }
          step_loss += lv / double(o.accum);
        }
        gnorm = ps.grad_norm.item();
        if (!std::isfinite(gnorm)) {
          std::fprintf(stderr, "error: non-finite gradient norm at epoch %lld step %lld (loss %g); %s\n", (long long)epoch + 1,
                       (long long)step + 1, step_loss,
                       last_ckpt.empty() ? "no checkpoint was written yet" : ("last good checkpoint: " + last_ckpt).c_str());
          return false;
        }
        result.step_losses.push_back(step_loss);
        epoch_loss += step_loss;
        window_loss += step_loss;
        window_steps++;
      }
      pending.clear();
      return true;
    };
    for (int64_t s = 0; s < steps_per_epoch; s++) {
      int64_t step = epoch * steps_per_epoch + s;  // optimizer step, global
#ifdef ENGINE_WITH_CUDA
      if (profiling && step == session.profile_first) eng::cuda::profiler_start();
#endif
      {
        ENG_NVTX_RANGE("pretrain.step");
        PendingStep ps;
        ps.s = s;
        opt.set_lr(sched.lr(double(step)));
        for (int64_t m = 0; m < o.accum; m++) {
          data::Batch b;
          ENG_CHECK(feed.next(b), "internal: loader ended early in epoch {}", epoch);
          int64_t micro = step * o.accum + m;  // keys the mask noise
          eng::Generator mask_rng(o.seed, kMaskStream, uint64_t(micro) * uint64_t(o.batch * L));
          // Philox uniforms are bitwise the same on every device: the masks do not depend on it.
          Tensor noise = mask_rng.uniform({b.images.size(0), L}, 0.0, 1.0, eng::DType::F32, device);
          model::MaeOutput out;
          {
            ENG_NVTX_RANGE("pretrain.forward");
            out = mae.forward(b.images, noise, o.mask_ratio);
          }
          // While the GPU runs the forward pass just queued: the next batch into pinned memory, its copy queued.
          feed.prefetch();
          {
            ENG_NVTX_RANGE("pretrain.backward");
            (o.accum > 1 ? eng::mul(out.loss, 1.0 / double(o.accum)) : out.loss).backward();
          }
          ps.losses.push_back(out.loss.detach());
          ps.indices.push_back(b.indices);
          window_images += b.images.size(0);
        }
        {
          ENG_NVTX_RANGE("pretrain.optimizer");
          ps.grad_norm = eng::grad_norm_tensor(params);
          opt.step(ps.grad_norm, o.clip);  // clips on the device when o.clip > 0
          opt.zero_grad();
        }
        pending.push_back(std::move(ps));
      }
#ifdef ENGINE_WITH_CUDA
      if (profiling && step == session.profile_last) eng::cuda::profiler_stop();
#endif
      const bool log_now = (s + 1) % o.log_every == 0 || s + 1 == steps_per_epoch;
      if ((check_every_step || log_now) && !settle()) {
        result.status = 2;
        return result;
      }
      if (log_now) {
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_window).count();
        images_this_run += window_images;
        double ips = double(window_images) / std::max(dt, 1e-9);
        double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
        int64_t steps_left = (o.epochs - epoch) * steps_per_epoch - (s + 1);
        double eta = double(steps_left * o.accum * o.batch) / std::max(double(images_this_run) / run_s, 1e-9);
        std::printf("epoch %lld/%lld  step %lld/%lld  loss %.4f  lr %.3e  %.1f img/s  ETA %s\n", (long long)epoch + 1,
                    (long long)o.epochs, (long long)s + 1, (long long)steps_per_epoch, window_loss / double(window_steps),
                    opt.lr(), ips, fmt_duration(eta).c_str());
        std::fflush(stdout);
        metrics << json{{"epoch", epoch + 1}, {"step", step + 1}, {"loss", window_loss / double(window_steps)},
                        {"lr", opt.lr()}, {"grad_norm", gnorm}, {"images_per_s", ips}}
                       .dump()
                << "\n";
        curve.x.push_back(double(step + 1));
        curve.y.push_back(window_loss / double(window_steps));
        window_loss = 0;
        window_steps = 0;
        window_images = 0;
        t_window = std::chrono::steady_clock::now();
      }
    }
    double mean_loss = epoch_loss / double(steps_per_epoch);
    // Full precision so that a resumed run can be compared with an uninterrupted one bit for bit.
    metrics << json{{"epoch", epoch + 1}, {"train_loss", mean_loss}, {"train_loss_hex", fmt::format("{:a}", mean_loss)},
                    {"skipped_images", loader.skipped()}}
                   .dump()
            << "\n";
    metrics.flush();
    if (loader.skipped() > 0) std::printf("%s\n", loader.skip_summary().c_str());
    write_line_plot(o.out + "/loss.png", {curve});
    result.epochs_done = epoch + 1;
    if ((epoch + 1) % o.save_every == 0 || epoch + 1 == end_epoch) {
      eng::Checkpoint c;
      c.weights = host_copies(mae.state_dict());
      eng::OptimizerState os = opt.state_dict();
      c.optimizer_state = host_copies(os.tensors);
      c.optimizer = os.meta;
      c.step = opt.step_count();
      c.config = config_json;
      c.rng = {{"seed", o.seed}, {"next_epoch", epoch + 1}, {"mask_stream", kMaskStream}};
      last_ckpt = o.out + "/checkpoint-last.safetensors";
      eng::save_checkpoint(last_ckpt, c);
      std::printf("epoch %lld done: mean loss %.4f; checkpoint %s\n", (long long)epoch + 1, mean_loss, last_ckpt.c_str());
    } else {
      std::printf("epoch %lld done: mean loss %.4f\n", (long long)epoch + 1, mean_loss);
    }
    std::fflush(stdout);
  }
  if (end_epoch < o.epochs) {
    std::printf("stopped after epoch %lld of %lld as asked; continue with: moce pretrain --resume %s\n",
                (long long)end_epoch, (long long)o.epochs, o.out.c_str());
    return result;
  }
  eng::save_safetensors(o.out + "/weights.safetensors", host_copies(mae.state_dict()),
                        {{"config", json{{"model", model::config_to_json(cfg)}}.dump()}, {"format", "moce-weights-v1"}});
  std::printf("done: weights %s/weights.safetensors, checkpoint %s/checkpoint-last.safetensors, metrics %s/metrics.jsonl, "
              "loss curve %s/loss.png\n", o.out.c_str(), o.out.c_str(), o.out.c_str(), o.out.c_str());
  return result;
}

int cmd_pretrain(int argc, char** argv) {
  Args a("pretrain", "Pre-train a masked autoencoder (MAE) on an image folder or Fashion-MNIST.");
  a.add("data", "fashion-mnist", "training images: an ImageFolder root (root/<class>/<image>), fashion-mnist, or cifar10-bin:DIR")
      .add("config", "mae_tiny_p4_32", "model config (mae_tiny_p4_32, mae_small_p4_32, mae_vit_base_patch16, ...)")
      .add("epochs", "5", "epochs to train")
      .add("batch", "128", "images per micro-batch")
      .add("accum-iter", "1", "micro-batches per optimizer step (gradient accumulation)")
      .add("out", "runs/pretrain", "run directory (config, metrics, checkpoints)")
      .add("base-lr", "1.5e-4", "base learning rate; lr = base_lr * batch * accum_iter / 256")
      .add("min-lr", "0", "learning rate at the end of the cosine schedule")
      .add("warmup-epochs", "1", "epochs of linear warm-up")
      .add("weight-decay", "0.05", "AdamW weight decay (not on biases and norm weights, as MAE)")
      .add("mask-ratio", "0.75", "fraction of patches removed")
      .add("clip-grad", "0", "clip the gradient norm to this (0 = off)")
      .add("seed", "0", "seed of everything random (init, data order, augmentation, masks)")
      .add("workers", "2", "data loader threads")
      .add("limit", "0", "use only the first N training images (0 = all)")
      .add("save-every", "1", "write a checkpoint every N epochs (and always at the end)")
      .add("log-every", "20", "print a progress line every N optimizer steps")
      .add("device", "cpu", "cpu, or cuda / cuda:N: model, gradients and optimizer state on that GPU")
      .add("precision", "f32", "f32; tf32: f32 with TF32 tensor-core GEMMs (CUDA only); or bf16: mixed precision (bf16 activations and GEMM operands, f32 master weights, optimizer state and loss; CUDA only)")
      .add("stop-after", "0", "stop after this many epochs of the schedule, as if interrupted (0 = run to --epochs); go on with --resume")
      .add("resume", "", "continue the run in this directory from its last checkpoint (other flags except --epochs and --device are taken from it)")
      .add("profile-steps", "", "FIRST:LAST: bracket optimizer steps FIRST..LAST (0-based, inclusive) with cudaProfilerStart/Stop "
                                "for nsys --capture-range=cudaProfilerApi or ncu --profile-from-start off")
      .flag("no-norm-pix-loss", "regress raw pixels instead of per-patch normalised ones")
      .flag("strict", "fail on the first corrupt image instead of skipping it");
  if (!a.parse(argc, argv, 2)) return 0;

  PretrainOptions o;
  PretrainSession session;
  if (a.given("resume")) {
    session.resume = a.str("resume");
    if (a.given("epochs")) session.epochs = a.i64("epochs");
    if (a.given("device")) session.device = a.str("device");
  } else {
    o.device = a.str("device");  // checked first thing by pretrain()
    o.precision = a.str("precision");
    o.data = a.str("data");
    o.config = a.str("config");
    o.epochs = a.i64("epochs");
    o.batch = a.i64("batch");
    o.accum = a.i64("accum-iter");
    o.out = a.str("out");
    o.base_lr = a.f64("base-lr");
    o.min_lr = a.f64("min-lr");
    o.warmup_epochs = a.i64("warmup-epochs");
    o.weight_decay = a.f64("weight-decay");
    o.mask_ratio = a.f64("mask-ratio");
    o.clip = a.f64("clip-grad");
    o.seed = uint64_t(a.i64("seed"));
    o.workers = a.i64("workers");
    o.limit = a.i64("limit");
    o.save_every = a.i64("save-every");
    o.log_every = a.i64("log-every");
    o.norm_pix_loss = !a.on("no-norm-pix-loss");
    o.strict = a.on("strict");
  }
  session.stop_after = a.i64("stop-after");
  if (a.given("profile-steps")) {
    const std::string v = a.str("profile-steps");
    long long first = -1, last = -1;
    char tail = 0;
    ENG_CHECK(std::sscanf(v.c_str(), "%lld:%lld%c", &first, &last, &tail) == 2 && first >= 0 && last >= first,
              "--profile-steps expects FIRST:LAST with 0 <= FIRST <= LAST, got '{}'", v);
    session.profile_first = first;
    session.profile_last = last;
  }
  return pretrain(o, session).status;
}

}  // namespace moce
