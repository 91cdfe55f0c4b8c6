// extract.cpp: the feature bank from an MAE encoder, and the labels of its rows.
#include "moce/cluster/extract.h"

namespace moce::cluster {

FeatureBank extract_bank(const model::MaskedAutoencoder& model, std::shared_ptr<const data::Dataset> ds,
                         const data::Pipeline& pipeline, const ExtractOptions& opt) {
  ENG_CHECK(ds && ds->size() > 0, "feature extraction: {} has no images", ds ? ds->describe() : "no data set");
  ENG_CHECK(opt.pool == "mean" || opt.pool == "cls", "--pool must be mean or cls, got '{}'", opt.pool);
  ENG_CHECK(opt.dtype == eng::DType::F32 || opt.dtype == eng::DType::BF16, "--bank-dtype must be f32 or bf16, got {}",
            eng::dtype_name(opt.dtype));
  ENG_CHECK(opt.batch_size > 0, "--batch must be positive, got {}", opt.batch_size);
  data::LoaderOptions lo;
  lo.batch_size = opt.batch_size;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.num_workers = opt.workers;
  data::Loader loader(ds, pipeline, lo);
  loader.start_epoch(0);
  const eng::Device device = model.patch_weight.device();
  eng::NoGradGuard no_grad;
  std::vector<std::vector<uint8_t>> chunks;  // per batch, the rows in the bank's dtype
  std::vector<int64_t> index;
  std::vector<uint8_t> seen(size_t(ds->size()), 0);
  int64_t d = -1, done = 0, batches = 0;
  const size_t elem = eng::dtype_size(opt.dtype);
  const auto t0 = std::chrono::steady_clock::now();
  auto report = [&](bool last) {
    if (!opt.progress) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double rate = secs > 0 ? double(done) / secs : 0.0;
    const double eta = rate > 0 ? double(ds->size() - done) / rate : 0.0;
    opt.progress(fmt::format("features: {}/{} images, {:.0f} images/s, {}", done, ds->size(), rate,
                             last ? fmt::format("{:.1f} s", secs) : fmt::format("ETA {:.0f} s", eta)));
  };
  data::Batch b;
  while (loader.next(b)) {
    eng::Tensor imgs = b.images.to(device);
    eng::Tensor f = opt.pool == "mean" ? model.features(imgs) : model.encode_all(imgs).select(1, 0);
    f = eng::l2_normalize(f.to(eng::DType::F32), 1).to(eng::Device::cpu()).contiguous();
    const int64_t rows = f.size(0);
    ENG_CHECK(f.dim() == 2 && rows == b.images.size(0) && (d < 0 || f.size(1) == d),
              "feature extraction: the model gave {} for a batch of {} images", eng::shape_str(f.shape()), b.images.size(0));
    d = f.size(1);
    const float* p = f.data<float>();
    std::vector<int64_t> bidx = b.indices.to_vector<int64_t>();
    std::vector<uint8_t> out;
    out.reserve(size_t(rows) * size_t(d) * elem);
    for (int64_t r = 0; r < rows; r++) {
      const int64_t img = bidx[size_t(r)];
      if (seen[size_t(img)]) continue;  // a stand-in the loader used for a corrupt image: already in the bank
      for (int64_t j = 0; j < d; j++)
        ENG_CHECK(std::isfinite(p[r * d + j]), "feature extraction: the feature of {} (image {}) is not finite",
                  ds->id(img), img);
      seen[size_t(img)] = 1;
      index.push_back(img);
      const size_t at = out.size();
      out.resize(at + size_t(d) * elem);
      if (opt.dtype == eng::DType::F32) {
        std::memcpy(out.data() + at, p + r * d, size_t(d) * 4);
      } else {
        for (int64_t j = 0; j < d; j++) {
          eng::bf16 v(p[r * d + j]);
          std::memcpy(out.data() + at + size_t(j) * 2, &v.bits, 2);
        }
      }
    }
    chunks.push_back(std::move(out));
    done += rows;
    if (++batches % std::max<int64_t>(1, opt.progress_every) == 0) report(false);
  }
  report(true);
  const int64_t n = int64_t(index.size());
  ENG_CHECK(n > 0, "feature extraction: no image of {} could be read", ds->describe());
  // Rows in the loader's order, which without shuffling is the data set's.
  eng::Tensor all = eng::Tensor::empty({n, d}, opt.dtype);
  uint8_t* dst = static_cast<uint8_t*>(all.raw_data());
  for (const std::vector<uint8_t>& c : chunks) {
    std::memcpy(dst, c.data(), c.size());
    dst += c.size();
  }
  std::vector<std::string> paths;
  for (int64_t img : index) paths.push_back(ds->id(img));
  FeatureBank bank = bank_from_tensor(all, index, paths);
  bank.pool = opt.pool;
  bank.checkpoint_identity = opt.checkpoint_identity;
  return bank;
}

std::vector<int64_t> bank_labels(const FeatureBank& bank, const data::Dataset& ds) {
  std::vector<int64_t> labels;
  labels.reserve(bank.image_index.size());
  for (int64_t img : bank.image_index) {
    ENG_CHECK(img >= 0 && img < ds.size(), "feature bank{}: image {} is not in {}",
              bank.source.empty() ? "" : " " + bank.source, img, ds.describe());
    labels.push_back(ds.label(img));
  }
  return labels;
}

}  // namespace moce::cluster
