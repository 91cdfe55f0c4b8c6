// reconstruction.cpp: reconstructions of masked images, their PSNR, and the picture grid.
#include "moce/eval/reconstruction.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "data/image.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/common/batch_feed.h"
#include "moce/common/plot.h"
#include "moce/eval/features.h"

namespace moce {

using eng::DType;
using eng::Tensor;

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

const std::vector<std::string>& reconstruction_columns() {
  static const std::vector<std::string> columns = {"original", "masked", "reconstruction", "reconstruction + visible"};
  return columns;
}

data::Image titled_reconstruction_picture(const Tensor& grid, int64_t tile) {
  const data::Image body = data::tensor_to_image(grid, "reconstruction grid");
  const int64_t pad = 2, strip = kReconstructionTitleStrip;  // make_grid's padding; scale-2 text and a margin
  data::Image out;
  out.width = body.width;
  out.height = body.height + strip;
  out.pixels.assign(size_t(out.width * out.height * 3), 255);
  std::copy(body.pixels.begin(), body.pixels.end(), out.pixels.begin() + strip * out.width * 3);
  // Drawn upper case: the plot font draws a lower-case 'e' as its small exponent sign.
  std::vector<std::string> titles = reconstruction_columns();
  for (auto& t : titles) std::transform(t.begin(), t.end(), t.begin(), [](unsigned char ch) { return char(std::toupper(ch)); });
  for (size_t k = 0; k < titles.size(); k++) {
    int scale = 2;
    while (scale > 1 && text_width(titles[k], scale) > tile) scale--;
    const int64_t x0 = pad + int64_t(k) * (tile + pad);
    const int x = int(x0 + std::max<int64_t>(0, (tile - text_width(titles[k], scale)) / 2));
    draw_text(out, x, int((strip - 5 * scale) / 2), titles[k], scale, 0, 0, 0);
  }
  return out;
}

bool is_grayscale(const Tensor& pictures) {
  ENG_CHECK(pictures.dim() == 4 && pictures.size(1) == 3, "is_grayscale: expected [N, 3, H, W], got {}",
            eng::shape_str(pictures.shape()));
  const std::vector<float> v = pictures.to(eng::DType::F32).contiguous().to_vector<float>();
  const int64_t hw = pictures.size(2) * pictures.size(3);
  for (int64_t n = 0; n < pictures.size(0); n++)
    for (int64_t p = 0; p < hw; p++) {
      const float* px = v.data() + n * 3 * hw + p;
      if (std::fabs(px[0] - px[hw]) > 2.0f / 255 || std::fabs(px[0] - px[2 * hw]) > 2.0f / 255) return false;
    }
  return true;
}

Tensor channel_mean_as_gray(const Tensor& pictures) {
  return eng::mean(pictures, {1}, /*keepdim=*/true).expand(pictures.shape()).contiguous();
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
    res.grid_gray = is_grayscale(g.original);
    if (res.grid_gray) g.recon = channel_mean_as_gray(g.recon), g.pasted = channel_mean_as_gray(g.pasted);
    res.grid_factor = upscale_factor(cfg.img_size);
    res.grid = reconstruction_grid(g, grid_have, res.grid_factor);
  }
  return res;
}

}  // namespace moce
