// checkpoint.cpp: writing a pre-training checkpoint, and loading a model from a checkpoint or weights file.
#include "moce/train/checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "moce/common/device.h"

namespace moce {

using eng::Tensor;
using nlohmann::json;

void save_pretrain_checkpoint(const std::string& path, model::MaskedAutoencoder& model, const eng::AdamW& optimizer,
                              const json& config, uint64_t seed, int64_t next_epoch,
                              const std::map<std::string, Tensor>& extra) {
  eng::Checkpoint c;
  c.weights = host_copies(model.state_dict());
  for (const auto& [name, t] : extra) c.weights[name] = t;
  eng::OptimizerState os = optimizer.state_dict();
  c.optimizer_state = host_copies(os.tensors);
  c.optimizer = os.meta;
  c.step = optimizer.step_count();
  c.config = config;
  c.rng = {{"seed", seed}, {"next_epoch", next_epoch}, {"mask_stream", kMaskStream}};
  eng::save_checkpoint(path, c);
}

namespace {

bool path_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

void keep_previous_checkpoint(const std::string& run_dir) {
  const std::string last = run_dir + "/" + kLastCheckpointName, prev = run_dir + "/" + kPrevCheckpointName;
  if (!path_exists(last)) return;  // the run's first checkpoint
  const std::string link_tmp = prev + ".link-tmp";
  ::unlink(link_tmp.c_str());  // left by a crash between link and rename
  if (::link(last.c_str(), link_tmp.c_str()) == 0) {
    if (::rename(link_tmp.c_str(), prev.c_str()) == 0) return;
    const int err = errno;
    ::unlink(link_tmp.c_str());
    ENG_FAIL("{}: cannot rename {} to it: {}", prev, link_tmp, std::strerror(err));
  }
  // No hard links here: until the new last is written, checkpoint-prev alone holds the run (the resume names it).
  ENG_CHECK(::rename(last.c_str(), prev.c_str()) == 0, "{}: cannot rename {} to it: {}", prev, last,
            std::strerror(errno));
}

eng::Checkpoint load_run_checkpoint(const std::string& run_dir) {
  const std::string last = run_dir + "/" + kLastCheckpointName, prev = run_dir + "/" + kPrevCheckpointName;
  // What to do instead, when checkpoint-prev is there: verified by reading it whole, so it is never offered damaged.
  auto use_prev = [&]() -> std::string {
    if (!path_exists(prev)) return " (and there is no checkpoint-prev.safetensors to fall back on)";
    try {
      const eng::Checkpoint p = eng::load_checkpoint(prev);
      return fmt::format("; the previous checkpoint {} (step {}) is intact: to resume from it, rename it to {} "
                         "(mv {} {}) and run --resume {} again",
                         prev, p.step, kLastCheckpointName, prev, last, run_dir);
    } catch (const eng::Error& e) {
      return fmt::format("; the previous checkpoint is unusable too ({})", e.what());
    }
  };
  if (!path_exists(last))
    ENG_FAIL("--resume {}: no {} there{}", run_dir, kLastCheckpointName, use_prev());
  try {
    return eng::load_checkpoint(last);
  } catch (const eng::Error& e) {
    ENG_FAIL("--resume {}: the last checkpoint is damaged or unreadable: {}{}", run_dir, e.what(), use_prev());
  }
}

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
    cfg = model::mae_config_from_json(file_config.at("model"), file + " (metadata config[\"model\"])");
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
