// linprobe.cpp: frozen features of a ViT encoder, the probe on them, and `moce linprobe`'s report.
#include "moce/finetune/linprobe.h"

#include <cstdio>

#include "engine/error.h"
#include "moce/common/clock.h"
#include "moce/common/run_folder.h"
#include "moce/finetune/model_file.h"

namespace moce::finetune {

using nlohmann::json;

model::VitPool parse_probe_pool(const std::string& name) {
  if (name == "token") return model::VitPool::Token;
  if (name == "avg") return model::VitPool::Avg;
  ENG_FAIL("--pool '{}': expected token (class token, final norm) or avg (mean of the patch tokens, fc_norm)", name);
}

LinprobeResult linprobe(const model::VisionTransformer& encoder, const Downstream& task, const LinprobeOptions& o) {
  ENG_CHECK(o.pool == model::VitPool::Token || o.pool == model::VitPool::Avg, "--pool: the probe takes token or avg");
  check_capacity_factor(o.capacity_factor);
  const auto t0 = std::chrono::steady_clock::now();
  model::VisionTransformer m = classifier_from_encoder(encoder, 0, o.pool, o.probe.seed);
  set_moe_mode(moe_layers(m), /*training=*/false, o.capacity_factor);
  const data::Pipeline pipeline = data::eval_pipeline(m.config().img_size);
  auto fn = [&](const eng::Tensor& imgs) { return m.features(imgs); };
  FeatureSet train = extract_features(fn, task.train, pipeline, o.extract);
  FeatureSet test = extract_features(fn, task.test, pipeline, o.extract);
  LinprobeResult r;
  r.feature_seconds = seconds_since(t0);
  r.dim = train.features.size(1);
  r.probe = linear_probe(train.features, train.labels, test.features, test.labels, int64_t(task.classes.size()), o.probe);
  return r;
}

json run_linprobe_command(const LinprobeCommand& c) {
  ENG_CHECK(!c.out.empty(), "--out: no output folder given");
  ENG_CHECK(c.probe.probe.epochs > 0 && c.probe.probe.lr > 0 && c.probe.probe.batch_size > 0,
            "--epochs ({}), --lr ({}) and --batch ({}) must be positive", c.probe.probe.epochs, c.probe.probe.lr,
            c.probe.probe.batch_size);
  check_capacity_factor(c.probe.capacity_factor);
  EncoderFile enc = load_encoder(c.model_file, c.heads);
  Downstream task = open_downstream(c.data);
  const model::VitConfig& cfg = enc.vit.config();
  std::printf("[linprobe] model %s (%s): ViT %lld px, dim %lld, depth %lld; pool %s\n", c.model_file.c_str(),
              enc.kind.c_str(), (long long)cfg.img_size, (long long)cfg.embed_dim, (long long)cfg.depth,
              model::pool_name(c.probe.pool).c_str());
  if (std::string moe = moe_summary(enc.vit, c.probe.capacity_factor); !moe.empty())
    std::printf("[linprobe] %s; features without gate noise\n", moe.c_str());
  std::printf("[linprobe] data: %s\n", task.description.c_str());
  if (std::string note = resize_note(task, cfg.img_size); !note.empty()) std::printf("[linprobe] %s\n", note.c_str());
  std::fflush(stdout);
  make_run_dir(c.out);
  const RunLock lock(c.out);
  LinprobeResult r = linprobe(enc.vit, task, c.probe);
  json out = {{"format", "moce-linprobe"},
              {"model", c.model_file},
              {"model_kind", enc.kind},
              {"vit", model::config_to_json(cfg)},
              {"experts", moe_json(enc.vit, c.probe.capacity_factor)},
              {"data", task.description},
              {"classes", task.classes},
              {"pool", model::pool_name(c.probe.pool)},
              {"feature_dim", r.dim},
              {"standardised", "with the training features' mean and std: BatchNorm1d(affine=False) at evaluation"},
              {"optimizer", c.probe.probe.optimizer},
              {"lr", c.probe.probe.lr},
              {"epochs", c.probe.probe.epochs},
              {"batch", c.probe.probe.batch_size},
              {"seed", c.probe.probe.seed},
              {"train_images", task.train->size()},
              {"test_images", task.test->size()},
              {"train_top1", r.probe.train_top1},
              {"test_top1", r.probe.test_top1},
              {"final_loss", r.probe.final_loss},
              {"feature_seconds", r.feature_seconds},
              {"probe_seconds", r.probe.seconds}};
  write_json_file(c.out + "/linprobe.json", out);
  std::printf("[linprobe] test top-1 %.4f (train %.4f), features %.0f s, probe %.1f s; wrote %s/linprobe.json\n",
              r.probe.test_top1, r.probe.train_top1, r.feature_seconds, r.probe.seconds, c.out.c_str());
  return out;
}

}  // namespace moce::finetune
