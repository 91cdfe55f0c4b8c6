// checkpoint.cpp: training checkpoints on top of the safetensors reader and writer.
#include "engine/io/checkpoint.h"

#include <string>

#include "engine/io/safetensors.h"

namespace eng {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// A metadata entry of a checkpoint, parsed as JSON.
nlohmann::json metadata_json(const std::map<std::string, std::string>& metadata, const char* key,
                             const std::string& file) {
  auto it = metadata.find(key);
  ENG_CHECK(it != metadata.end(), "{}: checkpoint metadata has no \"{}\"", file, key);
  nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  ENG_CHECK(!j.is_discarded(), "{}: checkpoint metadata \"{}\" is not valid JSON", file, key);
  return j;
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : ck.weights) {
    ENG_CHECK(!starts_with(name, kOptimizerPrefix),
              "{}: weight '{}' starts with \"{}\", which is reserved for optimizer state; nothing was written", path,
              name, kOptimizerPrefix);
    tensors.emplace(name, t);
  }
  for (const auto& [name, t] : ck.optimizer_state) tensors.emplace(kOptimizerPrefix + name, t);

  std::map<std::string, std::string> metadata;
  metadata["format"] = kCheckpointFormat;
  metadata["step"] = std::to_string(ck.step);
  try {
    metadata["config"] = ck.config.dump();
    metadata["rng"] = ck.rng.dump();
    metadata["optimizer"] = ck.optimizer.dump();
  } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a string
    ENG_FAIL("{}: checkpoint metadata cannot be written ({}); nothing was written", path, e.what());
  }
  save_safetensors(path, tensors, metadata);
}

Checkpoint load_checkpoint(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  auto format = f.metadata.find("format");
  ENG_CHECK(format != f.metadata.end(), "{}: not a moce checkpoint (its __metadata__ has no \"format\" key)", path);
  ENG_CHECK(format->second == kCheckpointFormat, "{}: checkpoint format '{}' is not supported (this build reads {})",
            path, format->second.substr(0, 80), kCheckpointFormat);

  Checkpoint ck;
  nlohmann::json step = metadata_json(f.metadata, "step", path);
  ENG_CHECK(step.is_number_integer() && step.get<int64_t>() >= 0,
            "{}: checkpoint metadata \"step\" must be a non-negative integer, found {}", path, step.dump());
  ck.step = step.get<int64_t>();
  ck.config = metadata_json(f.metadata, "config", path);
  ck.rng = metadata_json(f.metadata, "rng", path);
  ck.optimizer = metadata_json(f.metadata, "optimizer", path);

  const std::string prefix = kOptimizerPrefix;
  for (auto& [name, t] : f.tensors) {
    if (starts_with(name, prefix))
      ck.optimizer_state.emplace(name.substr(prefix.size()), std::move(t));
    else
      ck.weights.emplace(name, std::move(t));
  }
  return ck;
}

void check_state_matches(const std::map<std::string, Tensor>& expected, const std::map<std::string, Tensor>& loaded,
                         const std::string& file) {
  size_t missing = 0, unexpected = 0, mismatched = 0;
  std::string first;  // the first problem, by name
  auto note = [&](size_t& counter, const std::string& name, const std::string& problem) {
    counter++;
    if (first.empty()) first = "tensor '" + name + "' " + problem;
  };
  // Walk both sorted maps together so that "first" is the alphabetically first problem of any kind.
  auto e = expected.begin();
  auto l = loaded.begin();
  while (e != expected.end() || l != loaded.end()) {
    if (l == loaded.end() || (e != expected.end() && e->first < l->first)) {
      note(missing, e->first, "is missing from the checkpoint");
      ++e;
    } else if (e == expected.end() || l->first < e->first) {
      note(unexpected, l->first, "is in the checkpoint but not in the model");
      ++l;
    } else {
      const Tensor& a = e->second;
      const Tensor& b = l->second;
      if (a.shape() != b.shape())
        note(mismatched, e->first,
             fmt::format("has shape {} in the checkpoint but {} in the model", shape_str(b.shape()), shape_str(a.shape())));
      else if (a.dtype() != b.dtype())
        note(mismatched, e->first,
             fmt::format("is {} in the checkpoint but {} in the model", dtype_name(b.dtype()), dtype_name(a.dtype())));
      ++e;
      ++l;
    }
  }
  ENG_CHECK(first.empty(), "{}: {} ({} missing, {} unexpected, {} mismatched; a checkpoint from another model?)", file,
            first, missing, unexpected, mismatched);
}

}  // namespace eng
