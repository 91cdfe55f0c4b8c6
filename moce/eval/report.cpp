// eval.cpp: evaluation of a pre-trained MAE: features, k-NN, linear probe, reconstruction PSNR and pictures.
#include "moce/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>

#include <omp.h>

#include "data/image.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/rng.h"
#include "moce/device.h"

namespace moce {

using eng::DType;
using eng::Tensor;
using nlohmann::json;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// JSON has no infinity or NaN: such figures are written as null.
json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

void write_text_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    ENG_CHECK(f.good(), "{}: cannot open for writing", tmp);
    f << text;
    f.flush();
    ENG_CHECK(f.good(), "{}: write failed", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    ENG_FAIL("{}: cannot rename the finished file into place", path);
  }
}

// Features [N, D] with labels [N], N > 0.
void check_features(const Tensor& f, const Tensor& labels, const char* what) {
  ENG_CHECK(f.defined() && f.dim() == 2, "{} features must be [N, D], got {}", what,
            f.defined() ? eng::shape_str(f.shape()) : "undefined");
  ENG_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == f.size(0),
            "{} labels must be [{}], got {}", what, f.size(0), labels.defined() ? eng::shape_str(labels.shape()) : "undefined");
  ENG_CHECK(f.size(0) > 0, "{} set is empty", what);
}

std::vector<int64_t> checked_labels(const Tensor& labels, int64_t num_classes, const char* what) {
  std::vector<int64_t> l = labels.to_vector<int64_t>();
  for (size_t i = 0; i < l.size(); i++)
    ENG_CHECK(l[i] >= 0 && l[i] < num_classes, "{} label {} of row {} is outside [0, {})", what, l[i], i, num_classes);
  return l;
}

double accuracy(const Tensor& logits, const std::vector<int64_t>& labels) {
  std::vector<int64_t> pred = eng::argmax(logits, 1).to_vector<int64_t>();
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); i++) correct += pred[i] == labels[i];
  return labels.empty() ? 0.0 : double(correct) / double(labels.size());
}

// Runs its scope with one OpenMP thread: for loops of tiny ops, where starting a thread team per op costs
// more than the op (and much more on a machine whose cores are busy). Results do not depend on it: every
// kernel gives the same bits for any thread count.
class SingleThreadScope {
 public:
  SingleThreadScope() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreadScope() { omp_set_num_threads(prev_); }
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

 private:
  int prev_;
};

data::LoaderOptions eval_loader_options(int64_t batch_size, int workers) {
  data::LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.num_workers = workers;
  return lo;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ datasets

std::shared_ptr<data::Dataset> open_dataset(const std::string& spec, bool train) {
  ENG_CHECK(!spec.empty(), "empty dataset name (use fashion-mnist, cifar10-bin:DIR or an image folder)");
  if (spec == "fashion-mnist") return data::fashion_mnist(train ? "train" : "t10k");
  const std::string cifar = "cifar10-bin:";
  if (spec.compare(0, cifar.size(), cifar) == 0) return data::CifarBinary::cifar10(spec.substr(cifar.size()), train);
  return std::make_shared<data::ImageFolder>(spec);
}

std::shared_ptr<const data::Dataset> limit_dataset(std::shared_ptr<const data::Dataset> ds, int64_t limit) {
  if (limit <= 0 || limit >= ds->size()) return ds;
  std::vector<int64_t> idx(static_cast<size_t>(limit));
  std::iota(idx.begin(), idx.end(), int64_t(0));
  return std::make_shared<data::SubsetDataset>(ds, std::move(idx));
}

// ------------------------------------------------------------------------------------------------ features

FeatureSet extract_features(const FeatureFn& fn, std::shared_ptr<const data::Dataset> ds, const data::Pipeline& pipeline,
                            const ExtractOptions& options, eng::Device device) {
  ENG_CHECK(ds && ds->size() > 0, "feature extraction: {} has no images", ds ? ds->describe() : "no dataset");
  ENG_CHECK(options.batch_size > 0, "feature extraction: batch size must be positive, got {}", options.batch_size);
  data::Loader loader(ds, pipeline, eval_loader_options(options.batch_size, options.workers));
  BatchFeed feed(loader, device);
  feed.start_epoch(0, loader.batches_per_epoch());
  eng::NoGradGuard no_grad;
  std::vector<Tensor> feats, labels;
  data::Batch b;
  int64_t dim = -1;
  while (feed.next(b)) {
    Tensor on_device = fn(b.images);  // queued
    feed.prefetch();                  // the next batch is loaded and its copy queued meanwhile
    Tensor f = on_device.to(eng::Device::cpu()).to(DType::F32).contiguous();
    ENG_CHECK(f.dim() == 2 && f.size(0) == b.images.size(0) && (dim < 0 || f.size(1) == dim),
              "feature extraction: the model gave {} for a batch of {} images", eng::shape_str(f.shape()),
              b.images.size(0));
    dim = f.size(1);
    const float* p = f.data<float>();
    for (int64_t i = 0; i < f.numel(); i++)
      ENG_CHECK(std::isfinite(p[i]), "feature extraction: non-finite feature for one of the images {}", loader.batch_ids(b));
    feats.push_back(f);
    labels.push_back(b.labels.to(eng::Device::cpu()));
  }
  FeatureSet out;
  out.features = feats.size() == 1 ? feats[0] : eng::cat(feats, 0);
  out.labels = labels.size() == 1 ? labels[0] : eng::cat(labels, 0);
  out.skipped = loader.skipped();
  return out;
}

FeatureSet extract_features(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                            const ExtractOptions& options) {
  eng::Device device = model.patch_weight.device();
  return extract_features([&](const Tensor& imgs) { return model.features(imgs); }, std::move(ds),
                          data::eval_pipeline(model.config().img_size), options, device);
}

// ------------------------------------------------------------------------------------------------ k-NN

KnnResult knn_classify(const Tensor& train_features, const Tensor& train_labels, const Tensor& test_features,
                       const Tensor& test_labels, int64_t num_classes, const KnnOptions& options) {
  check_features(train_features, train_labels, "k-NN training");
  check_features(test_features, test_labels, "k-NN test");
  ENG_CHECK(train_features.size(1) == test_features.size(1), "k-NN: training features have {} dimensions, test features {}",
            train_features.size(1), test_features.size(1));
  ENG_CHECK(options.k > 0 && options.temperature > 0 && options.chunk_rows > 0,
            "k-NN: k ({}), temperature ({}) and chunk_rows ({}) must be positive", options.k, options.temperature,
            options.chunk_rows);
  ENG_CHECK(num_classes > 0, "k-NN: num_classes must be positive, got {}", num_classes);
  eng::NoGradGuard no_grad;
  const int64_t n_train = train_features.size(0), n_test = test_features.size(0);
  const int64_t k = std::min(options.k, n_train);
  std::vector<int64_t> train_l = checked_labels(train_labels, num_classes, "k-NN training");
  std::vector<int64_t> test_l = checked_labels(test_labels, num_classes, "k-NN test");

  Tensor train_n = eng::l2_normalize(train_features.to(eng::Device::cpu()).to(DType::F32), 1);
  Tensor test_n = eng::l2_normalize(test_features.to(eng::Device::cpu()).to(DType::F32), 1);
  Tensor train_t = train_n.t().contiguous();  // [D, N_train]

  KnnResult r;
  r.predictions.assign(size_t(n_test), -1);
  for (int64_t start = 0; start < n_test; start += options.chunk_rows) {
    const int64_t rows = std::min(options.chunk_rows, n_test - start);
    Tensor sim = eng::matmul(test_n.narrow(0, start, rows), train_t).contiguous();  // [rows, N_train]
    const float* s = sim.data<float>();
    // Rows are independent; each writes only its own prediction.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++) {
      const float* row = s + i * n_train;
      std::vector<int64_t> order(static_cast<size_t>(n_train));
      std::iota(order.begin(), order.end(), int64_t(0));
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int64_t a, int64_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      std::vector<double> score(size_t(num_classes), 0.0);
      for (int64_t j = 0; j < k; j++) {
        int64_t t = order[size_t(j)];
        score[size_t(train_l[size_t(t)])] += std::exp(double(row[t]) / options.temperature);
      }
      int64_t best = 0;
      for (int64_t c = 1; c < num_classes; c++)
        if (score[size_t(c)] > score[size_t(best)]) best = c;
      r.predictions[size_t(start + i)] = best;
    }
  }
  for (int64_t i = 0; i < n_test; i++) r.correct += r.predictions[size_t(i)] == test_l[size_t(i)];
  r.total = n_test;
  r.top1 = double(r.correct) / double(n_test);
  return r;
}

// ------------------------------------------------------------------------------------------------ linear probe

ProbeResult linear_probe(const Tensor& train_features, const Tensor& train_labels, const Tensor& test_features,
                         const Tensor& test_labels, int64_t num_classes, const ProbeOptions& options) {
  check_features(train_features, train_labels, "linear probe training");
  check_features(test_features, test_labels, "linear probe test");
  ENG_CHECK(train_features.size(1) == test_features.size(1),
            "linear probe: training features have {} dimensions, test features {}", train_features.size(1),
            test_features.size(1));
  ENG_CHECK(options.epochs > 0 && options.batch_size > 0 && options.lr > 0,
            "linear probe: epochs ({}), batch size ({}) and lr ({}) must be positive", options.epochs, options.batch_size,
            options.lr);
  ENG_CHECK(options.optimizer == "adamw" || options.optimizer == "sgd",
            "linear probe: optimizer '{}' is not adamw or sgd", options.optimizer);
  ENG_CHECK(num_classes > 0, "linear probe: num_classes must be positive, got {}", num_classes);
  auto t0 = std::chrono::steady_clock::now();
  SingleThreadScope one_thread;  // batches of a few hundred rows x a few hundred features
  const int64_t n = train_features.size(0), d = train_features.size(1);
  std::vector<int64_t> train_l = checked_labels(train_labels, num_classes, "linear probe training");
  std::vector<int64_t> test_l = checked_labels(test_labels, num_classes, "linear probe test");
  Tensor y_train = train_labels.to(eng::Device::cpu()).to(DType::I64).contiguous();

  // Standardise with the training statistics: BatchNorm(affine=False) at eval time.
  Tensor x_train, x_test;
  {
    eng::NoGradGuard no_grad;
    Tensor xtr = train_features.to(eng::Device::cpu()).to(DType::F32);
    Tensor mu = eng::mean(xtr, {0}, true);
    Tensor sd = eng::sqrt(eng::add(eng::var(xtr, {0}, /*unbiased=*/false, true), 1e-6));
    x_train = eng::div(eng::sub(xtr, mu), sd).contiguous();
    x_test = eng::div(eng::sub(test_features.to(eng::Device::cpu()).to(DType::F32), mu), sd).contiguous();
  }

  eng::Generator init(options.seed, /*stream=*/0);
  Tensor w = init.normal({num_classes, d}, 0.0, 0.01).requires_grad_();
  Tensor b = Tensor::zeros({num_classes}).requires_grad_();
  std::vector<eng::ParamGroup> groups(2);
  groups[0].params = {w};
  groups[0].names = {"head.weight"};
  groups[0].weight_decay = options.weight_decay;
  groups[1].params = {b};
  groups[1].names = {"head.bias"};
  groups[1].weight_decay = 0.0;  // no decay on the bias, as MAE
  std::unique_ptr<eng::Optimizer> opt;
  if (options.optimizer == "adamw")
    opt = std::make_unique<eng::AdamW>(groups, eng::AdamWOptions{options.lr, 0.9, 0.999, 1e-8, options.weight_decay});
  else
    opt = std::make_unique<eng::SGD>(groups, eng::SGDOptions{options.lr, options.momentum, options.weight_decay, false});

  const int64_t steps_per_epoch = (n + options.batch_size - 1) / options.batch_size;
  eng::CosineSchedule sched{options.lr, 0.0, 0.0, double(options.epochs * steps_per_epoch)};
  ProbeResult r;
  for (int64_t epoch = 0; epoch < options.epochs; epoch++) {
    Tensor perm = eng::Generator(options.seed, /*stream=*/uint64_t(1 + epoch)).permutation(n);
    double loss_sum = 0;
    for (int64_t s = 0; s < steps_per_epoch; s++) {
      const int64_t start = s * options.batch_size, rows = std::min(options.batch_size, n - start);
      Tensor idx = perm.narrow(0, start, rows);
      Tensor x = eng::index_select(x_train, 0, idx);
      Tensor y = eng::index_select(y_train, 0, idx);
      Tensor loss = eng::cross_entropy(eng::linear(x, w, b), y);
      opt->zero_grad();
      loss.backward();
      opt->set_lr(sched.lr(double(r.steps)));
      opt->step();
      r.steps++;
      double lv = loss.item();
      ENG_CHECK(std::isfinite(lv), "linear probe: non-finite loss at epoch {} step {} (lr {})", epoch + 1, s + 1, opt->lr());
      loss_sum += lv * double(rows);
    }
    r.final_loss = loss_sum / double(n);
  }
  eng::NoGradGuard no_grad;
  r.train_top1 = accuracy(eng::linear(x_train, w, b), train_l);
  r.test_top1 = accuracy(eng::linear(x_test, w, b), test_l);
  r.seconds = seconds_since(t0);
  return r;
}

// ------------------------------------------------------------------------------------------------ reconstruction

Reconstruction reconstruct(const model::MaskedAutoencoder& model, const Tensor& images, const Tensor& noise,
                           double mask_ratio) {
  eng::NoGradGuard no_grad;
  const model::MaeConfig& cfg = model.config();
  const int64_t p = cfg.patch_size, c = cfg.in_chans, n = images.size(0), l = cfg.num_patches();
  model::MaeOutput out = model.forward(images, noise, mask_ratio);
  Tensor pred = out.pred, zero_pred;
  auto to_host = [](const Tensor& t) { return t.to(eng::Device::cpu()).to(DType::F32).contiguous(); };
  if (cfg.norm_pix_loss) {
    Tensor target = model::patchify(images, p);
    Tensor mean = eng::mean(target, {-1}, true);
    Tensor var = eng::var(target, {-1}, /*unbiased=*/true, true);
    pred = eng::add(eng::mul(pred, eng::sqrt(eng::add(var, 1e-6))), mean);
    zero_pred = to_host(model::unpatchify(mean.expand(pred.shape()), p, c));
  }
  Tensor recon_normalised = to_host(model::unpatchify(pred, p, c));
  Tensor mask_px = to_host(model::unpatchify(out.mask.unsqueeze(-1).expand({n, l, cfg.patch_dim()}), p, c));
  Reconstruction r;
  r.original = eng::clamp(data::unnormalize(to_host(images)), 0.0, 1.0).contiguous();
  r.recon = eng::clamp(data::unnormalize(recon_normalised), 0.0, 1.0).contiguous();
  Tensor keep = eng::add(eng::neg(mask_px), 1.0);
  r.pasted = eng::add(eng::mul(r.original, keep), eng::mul(r.recon, mask_px)).contiguous();
  r.masked = eng::add(eng::mul(r.original, keep), eng::mul(mask_px, 0.5)).contiguous();
  r.mask = mask_px;
  if (zero_pred.defined()) r.zero_pred = eng::clamp(data::unnormalize(zero_pred), 0.0, 1.0).contiguous();
  r.loss = out.loss.item();
  return r;
}

double psnr_db(double mse, double peak) {
  if (mse <= 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(peak * peak / mse);
}

void PsnrAccumulator::add(const Tensor& a, const Tensor& b, const Tensor& weight) {
  ENG_CHECK(a.defined() && b.defined() && a.dim() == 4 && a.shape() == b.shape(),
            "PSNR: expected two picture batches [N, C, H, W] of one shape, got {} and {}",
            a.defined() ? eng::shape_str(a.shape()) : "undefined", b.defined() ? eng::shape_str(b.shape()) : "undefined");
  ENG_CHECK(!weight.defined() || weight.shape() == a.shape(), "PSNR: weight {} does not match the pictures {}",
            eng::shape_str(weight.shape()), eng::shape_str(a.shape()));
  std::vector<float> va = a.to_vector<float>(), vb = b.to_vector<float>();
  std::vector<float> vw = weight.defined() ? weight.to_vector<float>() : std::vector<float>();
  const int64_t n = a.size(0), per = a.numel() / std::max<int64_t>(n, 1);
  for (int64_t i = 0; i < n; i++) {
    double sq = 0, cnt = 0;
    for (int64_t j = i * per; j < (i + 1) * per; j++) {
      double w = vw.empty() ? 1.0 : double(vw[size_t(j)]);
      double e = double(va[size_t(j)]) - double(vb[size_t(j)]);
      sq += w * e * e;
      cnt += w;
    }
    if (cnt <= 0) continue;  // nothing of this image is scored (e.g. no removed patch)
    sum_sq_ += sq;
    count_ += cnt;
    sum_image_psnr_ += std::min(psnr_db(sq / cnt), kPsnrCapDb);
    images_++;
  }
}

Tensor upscale_nearest(const Tensor& images, int64_t factor) {
  ENG_CHECK(images.defined() && images.dim() == 4, "upscale_nearest: expected [N, C, H, W], got {}",
            images.defined() ? eng::shape_str(images.shape()) : "undefined");
  ENG_CHECK(factor >= 1, "upscale_nearest: factor {} must be >= 1", factor);
  if (factor == 1) return images;
  const int64_t nc = images.size(0) * images.size(1), h = images.size(2), w = images.size(3);
  std::vector<float> src = images.to_vector<float>();
  Tensor out = Tensor::empty({images.size(0), images.size(1), h * factor, w * factor});
  float* o = out.data<float>();
  const int64_t ow = w * factor;
  for (int64_t k = 0; k < nc; k++)
    for (int64_t y = 0; y < h * factor; y++)
      for (int64_t x = 0; x < ow; x++) o[(k * h * factor + y) * ow + x] = src[size_t((k * h + y / factor) * w + x / factor)];
  return out;
}

int64_t upscale_factor(int64_t size, int64_t target) {
  ENG_CHECK(size > 0, "upscale_factor: size {} must be positive", size);
  return std::max<int64_t>(1, (target + size - 1) / size);
}

Tensor reconstruction_grid(const Reconstruction& r, int64_t count, int64_t factor) {
  ENG_CHECK(r.original.defined() && r.original.dim() == 4, "reconstruction_grid: no pictures");
  const int64_t n = std::min(count, r.original.size(0));
  ENG_CHECK(n > 0, "reconstruction_grid: asked for {} images", count);
  std::vector<Tensor> tiles;
  for (int64_t i = 0; i < n; i++)
    for (const Tensor* t : {&r.original, &r.masked, &r.recon, &r.pasted}) tiles.push_back(t->select(0, i));
  return data::make_grid(upscale_nearest(eng::stack(tiles, 0), factor), 4, 2, 1.0f);
}

ReconResult evaluate_reconstruction(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                                    const ReconOptions& options) {
  ENG_CHECK(ds && ds->size() > 0, "reconstruction: {} has no images", ds ? ds->describe() : "no dataset");
  ENG_CHECK(options.mask_ratio > 0 && options.mask_ratio < 1, "reconstruction: mask ratio {} must be in (0, 1)",
            options.mask_ratio);
  const model::MaeConfig& cfg = model.config();
  const int64_t l = cfg.num_patches();
  eng::Device device = model.patch_weight.device();
  data::Loader loader(ds, data::eval_pipeline(cfg.img_size), eval_loader_options(options.batch_size, options.workers));
  BatchFeed feed(loader, device);
  feed.start_epoch(0, loader.batches_per_epoch());
  PsnrAccumulator masked_acc, full_acc, zero_acc;
  ReconResult res;
  double loss_sum = 0;
  std::vector<Tensor> grid_parts[4];
  int64_t grid_have = 0;
  data::Batch b;
  while (feed.next(b)) {
    // The next batch's copy overlaps this one's work (reconstruct() reads its results back at the end).
    feed.prefetch();
    // The mask of image i depends only on (seed, i), not on the batch it falls in.
    std::vector<int64_t> ids = b.indices.to_vector<int64_t>();
    std::vector<Tensor> rows;
    for (int64_t id : ids) rows.push_back(eng::Generator(options.seed, kEvalMaskStream, uint64_t(id) * uint64_t(l)).uniform({1, l}));
    Tensor noise = eng::cat(rows, 0).to(device);
    Reconstruction r = reconstruct(model, b.images, noise, options.mask_ratio);
    ENG_CHECK(std::isfinite(r.loss), "reconstruction: non-finite loss for the images {}", loader.batch_ids(b));
    const int64_t bs = b.images.size(0);
    loss_sum += r.loss * double(bs);
    res.images += bs;
    masked_acc.add(r.pasted, r.original, r.mask);
    full_acc.add(r.pasted, r.original);
    if (r.zero_pred.defined()) zero_acc.add(r.zero_pred, r.original, r.mask);
    if (grid_have < options.grid_images) {
      int64_t take = std::min(options.grid_images - grid_have, bs);
      const Tensor* parts[4] = {&r.original, &r.masked, &r.recon, &r.pasted};
      for (int k = 0; k < 4; k++) grid_parts[k].push_back(parts[k]->narrow(0, 0, take).contiguous());
      grid_have += take;
    }
  }
  res.loss = loss_sum / double(res.images);
  res.mse_masked = masked_acc.mse();
  res.mse_full = full_acc.mse();
  res.psnr_masked = masked_acc.psnr();
  res.psnr_full = full_acc.psnr();
  res.psnr_masked_mean_image = masked_acc.mean_image_psnr();
  res.psnr_full_mean_image = full_acc.mean_image_psnr();
  res.psnr_masked_zero_pred = zero_acc.pixels() > 0 ? zero_acc.psnr() : std::numeric_limits<double>::quiet_NaN();
  res.skipped = loader.skipped();
  if (grid_have > 0) {
    Reconstruction g;
    g.original = eng::cat(grid_parts[0], 0);
    g.masked = eng::cat(grid_parts[1], 0);
    g.recon = eng::cat(grid_parts[2], 0);
    g.pasted = eng::cat(grid_parts[3], 0);
    res.grid_factor = upscale_factor(cfg.img_size);
    res.grid = reconstruction_grid(g, grid_have, res.grid_factor);
  }
  return res;
}

// ------------------------------------------------------------------------------------------------ everything

json evaluate_mae(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> train,
                  std::shared_ptr<const data::Dataset> test, const EvalMaeOptions& options) {
  ENG_CHECK(!options.out_dir.empty(), "evaluate_mae: no output directory");
  {
    std::error_code ec;
    std::filesystem::create_directories(options.out_dir, ec);
    ENG_CHECK(std::filesystem::is_directory(options.out_dir), "--out {}: cannot create the directory{}", options.out_dir,
              ec ? " (" + ec.message() + ")" : std::string());
  }
  // Label k must mean the same class in both sets.
  const auto& tc = train->classes();
  const auto& sc = test->classes();
  for (size_t i = 0; i < std::min(tc.size(), sc.size()); i++)
    ENG_CHECK(tc[i] == sc[i], "train set {} and test set {} disagree on class {}: '{}' vs '{}'", train->describe(),
              test->describe(), i, tc[i], sc[i]);

  const model::MaeConfig& cfg = model.config();
  auto say = [&](const std::string& s) {
    if (options.verbose) {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
  };
  json j;
  j["inputs"] = options.inputs;
  j["model"] = model::config_to_json(cfg);
  j["train_data"] = {{"describe", train->describe()}, {"images", train->size()}};
  j["test_data"] = {{"describe", test->describe()}, {"images", test->size()}};

  if (options.run_knn || options.run_probe) {
    auto t = std::chrono::steady_clock::now();
    say(fmt::format("features: {} training and {} test images ...", train->size(), test->size()));
    FeatureSet ftr = extract_features(model, train, options.extract);
    FeatureSet fte = extract_features(model, test, options.extract);
    double feat_s = seconds_since(t);
    int64_t num_classes = std::max<int64_t>(train->num_classes(), test->num_classes());
    for (const FeatureSet* f : {&ftr, &fte})
      for (int64_t v : f->labels.to_vector<int64_t>()) num_classes = std::max(num_classes, v + 1);
    j["features"] = {{"kind", "mean of the patch tokens after the encoder's final norm, no masking"},
                     {"pipeline", data::eval_pipeline(cfg.img_size).describe()},
                     {"dim", ftr.features.size(1)},
                     {"train_images", ftr.features.size(0)},
                     {"test_images", fte.features.size(0)},
                     {"num_classes", num_classes},
                     {"skipped_corrupt_images", ftr.skipped + fte.skipped},
                     {"seconds", feat_s}};
    say(fmt::format("features: {} x {} and {} x {} in {:.1f} s", ftr.features.size(0), ftr.features.size(1),
                    fte.features.size(0), fte.features.size(1), feat_s));
    if (options.run_knn) {
      auto tk = std::chrono::steady_clock::now();
      KnnResult knn = knn_classify(ftr.features, ftr.labels, fte.features, fte.labels, num_classes, options.knn);
      double s = seconds_since(tk);
      j["knn"] = {{"k", std::min(options.knn.k, ftr.features.size(0))},
                  {"temperature", options.knn.temperature},
                  {"similarity", "cosine on L2-normalised features; vote weight exp(sim / T)"},
                  {"top1", knn.top1},
                  {"correct", knn.correct},
                  {"total", knn.total},
                  {"seconds", s}};
      say(fmt::format("k-NN (k={}, T={}): top-1 {:.2f}% ({}/{})", std::min(options.knn.k, ftr.features.size(0)),
                      options.knn.temperature, 100 * knn.top1, knn.correct, knn.total));
    }
    if (options.run_probe) {
      ProbeResult pr = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes, options.probe);
      j["linear_probe"] = {{"standardise", "per-dimension train mean and population std (+1e-6 in the variance), "
                                           "i.e. BatchNorm without affine at eval time"},
                           {"optimizer", options.probe.optimizer},
                           {"lr", options.probe.lr},
                           {"schedule", "cosine to 0, no warm-up"},
                           {"weight_decay", options.probe.weight_decay},
                           {"momentum", options.probe.optimizer == "sgd" ? json(options.probe.momentum) : json(nullptr)},
                           {"epochs", options.probe.epochs},
                           {"batch_size", options.probe.batch_size},
                           {"seed", options.probe.seed},
                           {"steps", pr.steps},
                           {"final_train_loss", num(pr.final_loss)},
                           {"train_top1", pr.train_top1},
                           {"top1", pr.test_top1},
                           {"seconds", pr.seconds}};
      say(fmt::format("linear probe ({} epochs, {}): top-1 {:.2f}% (train {:.2f}%, loss {:.4f}) in {:.1f} s",
                      options.probe.epochs, options.probe.optimizer, 100 * pr.test_top1, 100 * pr.train_top1,
                      pr.final_loss, pr.seconds));
    }
  }

  std::string png = options.out_dir + "/reconstructions.png";
  if (options.run_recon) {
    auto t = std::chrono::steady_clock::now();
    ReconResult rr = evaluate_reconstruction(model, test, options.recon);
    double s = seconds_since(t);
    json recon = {{"mask_ratio", options.recon.mask_ratio},
                  {"seed", options.recon.seed},
                  {"images", rr.images},
                  {"loss", num(rr.loss)},
                  {"psnr_masked_db", num(rr.psnr_masked)},
                  {"psnr_full_pasted_db", num(rr.psnr_full)},
                  {"psnr_masked_mean_per_image_db", num(rr.psnr_masked_mean_image)},
                  {"psnr_masked_zero_prediction_db", num(rr.psnr_masked_zero_pred)},
                  {"psnr_full_pasted_mean_per_image_db", num(rr.psnr_full_mean_image)},
                  {"mse_masked", rr.mse_masked},
                  {"mse_full_pasted", rr.mse_full},
                  {"skipped_corrupt_images", rr.skipped},
                  {"seconds", s},
                  {"how", std::string("pixels in [0, 1] after undoing the ImageNet normalisation, peak 1.0; psnr_*_db from the "
                                      "MSE pooled over the set, *_mean_per_image_db the mean of per-image PSNRs (capped at ") +
                              fmt::format("{}", kPsnrCapDb) + " dB)" +
                              (cfg.norm_pix_loss ? "; norm_pix_loss predictions mapped back with each removed patch's TRUE "
                                                   "mean and unbiased variance, as MAE's visualisation, so the figure "
                                                   "measures the patch's structure; psnr_masked_zero_prediction_db is what "
                                                   "predicting 0 (each patch flat at its true mean) scores"
                                                 : "")}};
    if (rr.grid.defined()) {
      data::write_png(png, rr.grid);
      recon["png"] = {{"path", png},
                      {"images", std::min(options.recon.grid_images, rr.images)},
                      {"columns", {"original", "masked", "reconstruction", "reconstruction + visible"}},
                      {"upscale", rr.grid_factor},
                      {"width", rr.grid.size(2)},
                      {"height", rr.grid.size(1)}};
    }
    j["reconstruction"] = recon;
    say(fmt::format("reconstruction (mask {}): PSNR {:.2f} dB on removed patches, {:.2f} dB whole image with visible "
                    "pasted{}; loss {:.4f}; {} images in {:.1f} s",
                    options.recon.mask_ratio, rr.psnr_masked, rr.psnr_full,
                    std::isfinite(rr.psnr_masked_zero_pred)
                        ? fmt::format(" (flat patches at their true mean: {:.2f} dB)", rr.psnr_masked_zero_pred)
                        : std::string(),
                    rr.loss, rr.images, s));
  }
  std::string json_path = options.out_dir + "/eval.json";
  write_text_atomic(json_path, j.dump(2) + "\n");
  return j;
}

// ------------------------------------------------------------------------------------------------ loading

model::MaskedAutoencoder load_mae(const std::string& file, const std::string& config_name, bool random_init,
                                  uint64_t seed, json* info) {
  json found = json::object();
  if (file.empty()) {
    ENG_CHECK(random_init && !config_name.empty(),
              "no --checkpoint given: pass --checkpoint FILE, or --random-init with --config NAME");
    model::MaskedAutoencoder m(model::mae_config(config_name), seed);
    found = {{"file", nullptr}, {"config_source", "--config " + config_name}, {"random_init", true}, {"seed", seed}};
    if (info) *info = found;
    return m;
  }
  eng::SafetensorsFile f = eng::load_safetensors(file);
  std::string format = f.metadata.count("format") ? f.metadata.at("format") : std::string();
  json file_config;
  if (auto it = f.metadata.find("config"); it != f.metadata.end()) {
    file_config = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    ENG_CHECK(!file_config.is_discarded(), "{}: metadata \"config\" is not valid JSON", file);
  }
  model::MaeConfig cfg;
  if (file_config.is_object() && file_config.contains("model")) {
    try {
      cfg = model::mae_config_from_json(file_config.at("model"));
    } catch (const nlohmann::json::exception& e) {
      ENG_FAIL("{}: metadata config[\"model\"] is not a model config ({})", file, e.what());
    }
    ENG_CHECK(config_name.empty() || config_name == cfg.name,
              "{}: the file was made with model config '{}', but --config {} was given (leave --config out)", file, cfg.name,
              config_name);
    found["config_source"] = "file metadata";
  } else {
    ENG_CHECK(!config_name.empty(), "{}: no model config in its metadata; pass --config NAME", file);
    cfg = model::mae_config(config_name);
    found["config_source"] = "--config " + config_name;
  }
  found["file"] = file;
  found["format"] = format.empty() ? json(nullptr) : json(format);
  if (auto it = f.metadata.find("step"); it != f.metadata.end()) {
    json step = json::parse(it->second, nullptr, false);
    if (step.is_number_integer()) found["step"] = step;
  }
  model::MaskedAutoencoder m(cfg, seed);
  found["random_init"] = random_init;
  if (random_init) {
    found["seed"] = seed;
  } else {
    // A checkpoint also holds optimizer state ("optim.*"); the model takes the rest.
    std::map<std::string, Tensor> weights;
    for (auto& [name, t] : f.tensors)
      if (format != eng::kCheckpointFormat || name.rfind(eng::kOptimizerPrefix, 0) != 0) weights.emplace(name, t);
    m.load_state_dict(weights, file);
    int64_t unused = int64_t(weights.size()) - int64_t(m.state_dict().size());
    found["unused_tensors"] = std::max<int64_t>(0, unused);
  }
  if (info) *info = found;
  return m;
}

}  // namespace moce
