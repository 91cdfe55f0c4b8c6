// pretrain_config.cpp: PretrainOptions to and from JSON, under the names config.json has always used.
#include "moce/train/pretrain_config.h"

#include "engine/error.h"
#include "moce/common/cli.h"

namespace moce {

using nlohmann::json;

json options_to_json(const PretrainOptions& o) {
  json j = {{"data", o.data},          {"config", o.config},       {"epochs", o.epochs},     {"batch", o.batch},
          {"accum_iter", o.accum},   {"save_every", o.save_every}, {"warmup_epochs", o.warmup_epochs},
          {"workers", o.workers},    {"limit", o.limit},         {"log_every", o.log_every}, {"base_lr", o.base_lr},
          {"min_lr", o.min_lr},      {"weight_decay", o.weight_decay}, {"mask_ratio", o.mask_ratio},
          {"clip_grad", o.clip},     {"seed", o.seed},           {"strict", o.strict},     {"norm_pix_loss", o.norm_pix_loss},
          {"device", o.device},      {"precision", o.precision}};
  if (o.method == "mae") return j;
  j["method"] = o.method;
  j["init"] = o.init;
  j["clusters"] = o.clusters;
  j["experts"] = expert_options_to_json(o.experts);
  return j;
}

void validate_options(const PretrainOptions& o) {
  check_at_least("--epochs", o.epochs, int64_t(1));
  check_at_least("--batch", o.batch, int64_t(1));
  check_at_least("--accum-iter", o.accum, int64_t(1));
  check_at_least("--save-every", o.save_every, int64_t(1));
  check_at_least("--log-every", o.log_every, int64_t(1));
  check_at_least("--workers", o.workers, int64_t(0));
  check_at_least("--limit", o.limit, int64_t(0));
  check_at_least("--warmup-epochs", o.warmup_epochs, int64_t(0));
  ENG_CHECK(o.warmup_epochs <= o.epochs, "--warmup-epochs {}: expected an integer in [0, --epochs {}]", o.warmup_epochs,
            o.epochs);
  if (o.base_lr != -1.0 || o.method == "mae") check_at_least("--base-lr", o.base_lr, 0.0);
  check_at_least("--min-lr", o.min_lr, 0.0);
  if (o.base_lr >= 0) {
    // The schedule decays from lr to min_lr: a min_lr above it would make the "decay" climb.
    const double lr = o.base_lr * double(o.batch * o.accum) / 256.0;
    ENG_CHECK(o.min_lr <= lr, "--min-lr {}: above the learning rate {} (--base-lr {} x batch {} x accum {} / 256); "
              "expected a number in [0, {}]", o.min_lr, lr, o.base_lr, o.batch, o.accum, lr);
  }
  check_at_least("--weight-decay", o.weight_decay, 0.0);
  check_in("--mask-ratio", o.mask_ratio, 0, 1, /*lo_open=*/true, /*hi_open=*/true);
  check_at_least("--clip-grad", o.clip, 0.0);
}

// The reader proper; options_from_json below checks the types nlohmann would mis-convert and turns what it throws
// into one eng::Error line.
static PretrainOptions read_options(const json& j) {
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
  o.method = j.value("method", "mae");         // and those before `moce train` were pre-training runs
  if (o.method != "mae") {
    o.init = j.at("init");
    o.clusters = j.at("clusters");
    o.experts = expert_options_from_json(j.at("experts"));
  }
  return o;
}

PretrainOptions options_from_json(const json& j) {
  ENG_CHECK(j.is_object(), "run config: expected a JSON object, got {}", j.type_name());
  // nlohmann turns a float into an integer field with a plain cast, undefined for one out of range (found by
  // fuzz/fuzz_run_config): every integer field must be a JSON integer.
  auto integer = [](const json& obj, const char* key, const char* where) {
    if (obj.contains(key))
      ENG_CHECK(obj[key].is_number_integer(), "run config: {}\"{}\" must be an integer, got {} {}", where, key,
                obj[key].type_name(), obj[key].dump().substr(0, 40));
  };
  for (const char* key : {"epochs", "batch", "accum_iter", "save_every", "warmup_epochs", "workers", "limit",
                          "log_every", "seed"})
    integer(j, key, "");
  if (j.contains("experts") && j["experts"].is_object()) {
    const json& e = j["experts"];
    for (const char* key : {"num_experts", "top_k"}) integer(e, key, "experts.");
    if (e.contains("moe_blocks") && e["moe_blocks"].is_array())
      for (const json& b : e["moe_blocks"])
        ENG_CHECK(b.is_number_integer(), "run config: experts.\"moe_blocks\" must hold integers, got {}",
                  b.dump().substr(0, 40));
  }
  try {
    return read_options(j);
  } catch (const json::exception& e) {
    ENG_FAIL("run config: {}", e.what());  // nlohmann's text is one line: "[json.exception...] key 'epochs' not found"
  }
}

}  // namespace moce
