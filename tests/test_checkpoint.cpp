// test_checkpoint.cpp: checkpoint round trips (weights, optimizer state, step, config, RNG state), the
// on-disk layout, refusals (not a checkpoint, other versions, broken metadata, reserved names), atomic
// replacement of an older checkpoint, and check_state_matches for a checkpoint from another model.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "tests/test_util.h"

using eng::Checkpoint;
using eng::DType;
using eng::Shape;
using eng::Tensor;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using testutil::error_of;
using testutil::TempDir;

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.nbytes() == 0 || std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

Tensor ramp(const Shape& shape, double scale, DType dtype = DType::F32) {
  std::vector<double> v(size_t(eng::shape_numel(shape)));
  for (size_t i = 0; i < v.size(); i++) v[i] = scale * (double(i) - 3.5);
  return Tensor::from_vector(v, shape, dtype);
}

// A small stand-in for a model's state: names follow timm/MAE.
std::map<std::string, Tensor> model_a() {
  return {{"patch_embed.proj.weight", ramp({8, 12}, 0.01)},
          {"patch_embed.proj.bias", ramp({8}, 0.1)},
          {"blocks.0.attn.qkv.weight", ramp({24, 8}, 0.001)},
          {"mask_token", ramp({1, 1, 8}, 0.5)},
          {"pos_embed", ramp({1, 5, 8}, 0.25, DType::BF16)}};
}

Checkpoint sample_checkpoint() {
  Checkpoint ck;
  ck.weights = model_a();
  for (const auto& [name, t] : ck.weights) {
    ck.optimizer_state["exp_avg." + name] = ramp(t.shape(), 1e-4);
    ck.optimizer_state["exp_avg_sq." + name] = ramp(t.shape(), 1e-8);
  }
  ck.optimizer_state["step_counts"] = Tensor::from_vector(std::vector<int64_t>{1234567890123LL, 7}, {2});
  ck.step = 1234;
  ck.config = {{"model", "vit_tiny"}, {"lr", 1.5e-4}, {"mask_ratio", 0.75}, {"experts", {1, 2, 3}}};
  ck.rng = {{"seed", 42}, {"stream", 3}, {"offset", 18446744073709551615ull}};
  ck.optimizer = {{"name", "adamw"}, {"beta1", 0.9}, {"beta2", 0.95}, {"weight_decay", 0.05}};
  return ck;
}

}  // namespace

TEST_SUITE("checkpoint") {

TEST_CASE("round trip keeps every tensor bit, the step, config, RNG and optimizer settings") {
  TempDir dir("ck_rt");
  const std::string path = dir.file("ck.safetensors");
  Checkpoint ck = sample_checkpoint();
  eng::save_checkpoint(path, ck);
  CHECK_FALSE(testutil::atomic_temporary_left(path));

  Checkpoint back = eng::load_checkpoint(path);
  CHECK(back.step == 1234);
  CHECK(back.config == ck.config);
  CHECK(back.rng == ck.rng);
  CHECK(back.rng["offset"].get<uint64_t>() == 18446744073709551615ull);  // the full 64 bits survive
  CHECK(back.optimizer == ck.optimizer);
  REQUIRE(back.weights.size() == ck.weights.size());
  for (const auto& [name, t] : ck.weights) CHECK_MESSAGE(same_bits(back.weights.at(name), t), name);
  REQUIRE(back.optimizer_state.size() == ck.optimizer_state.size());
  for (const auto& [name, t] : ck.optimizer_state) CHECK_MESSAGE(same_bits(back.optimizer_state.at(name), t), name);
  CHECK_NOTHROW(eng::check_state_matches(ck.weights, back.weights, path));
}

TEST_CASE("layout: weights under their own names, optimizer state under optim., metadata as JSON text") {
  TempDir dir("ck_layout");
  const std::string path = dir.file("ck.safetensors");
  eng::save_checkpoint(path, sample_checkpoint());
  eng::SafetensorsFile f = eng::load_safetensors(path);  // a checkpoint is a plain safetensors file
  CHECK(f.metadata.at("format") == "moce-checkpoint-v1");
  CHECK(f.metadata.at("step") == "1234");
  CHECK(json::parse(f.metadata.at("config"))["model"] == "vit_tiny");
  CHECK(json::parse(f.metadata.at("rng"))["seed"] == 42);
  CHECK(json::parse(f.metadata.at("optimizer"))["name"] == "adamw");
  CHECK(f.tensors.count("patch_embed.proj.weight") == 1);
  CHECK(f.tensors.count("optim.exp_avg.patch_embed.proj.weight") == 1);
  CHECK(f.tensors.count("optim.step_counts") == 1);
  CHECK(f.tensors.size() == 5 + 5 * 2 + 1);
}

TEST_CASE("an empty checkpoint and a checkpoint of views") {
  TempDir dir("ck_views");
  const std::string path = dir.file("ck.safetensors");
  Checkpoint ck;
  eng::save_checkpoint(path, ck);
  Checkpoint back = eng::load_checkpoint(path);
  CHECK(back.weights.empty());
  CHECK(back.optimizer_state.empty());
  CHECK(back.step == 0);
  CHECK(back.config == json::object());

  Tensor w = ramp({4, 6}, 1.0);
  ck.weights["head.weight"] = w.t();  // a transposed view is stored as its values
  eng::save_checkpoint(path, ck);
  back = eng::load_checkpoint(path);
  CHECK(back.weights.at("head.weight").shape() == Shape{6, 4});
  CHECK(back.weights.at("head.weight").to_vector<float>() == w.t().contiguous().to_vector<float>());
}

TEST_CASE("refusals: not a checkpoint, another version, broken metadata, reserved names") {
  TempDir dir("ck_bad");
  const std::string plain = dir.file("weights.safetensors");
  eng::save_safetensors(plain, model_a(), {{"note", "just weights"}});
  std::string msg = error_of([&] { eng::load_checkpoint(plain); });
  CHECK(msg.find(plain + ": not a moce checkpoint") == 0);

  auto with_metadata = [&](std::map<std::string, std::string> md) {
    const std::string p = dir.file("md.safetensors");
    eng::save_safetensors(p, model_a(), md);
    return error_of([&] { eng::load_checkpoint(p); });
  };
  std::map<std::string, std::string> good = {
      {"format", "moce-checkpoint-v1"}, {"step", "5"}, {"config", "{}"}, {"rng", "{}"}, {"optimizer", "{}"}};
  CHECK(with_metadata(good).empty());
  auto md = good;
  md["format"] = "moce-checkpoint-v2";
  CHECK(with_metadata(md).find("checkpoint format 'moce-checkpoint-v2' is not supported") != std::string::npos);
  md = good;
  md["config"] = "{\"lr\": ";
  CHECK(with_metadata(md).find("metadata \"config\" is not valid JSON") != std::string::npos);
  md = good;
  md["step"] = "-3";
  CHECK(with_metadata(md).find("\"step\" must be a non-negative integer, found -3") != std::string::npos);
  md = good;
  md["step"] = "1.5";
  CHECK(with_metadata(md).find("\"step\" must be a non-negative integer") != std::string::npos);
  md = good;
  md.erase("rng");
  CHECK(with_metadata(md).find("checkpoint metadata has no \"rng\"") != std::string::npos);

  // A corrupt file gets the safetensors reader's message, naming the file.
  const std::string corrupt = dir.file("corrupt.safetensors");
  std::ofstream(corrupt) << "garbage";
  CHECK(error_of([&] { eng::load_checkpoint(corrupt); }).find(corrupt + ": 7 bytes is too short") == 0);

  Checkpoint ck;
  ck.weights["optim.sneaky"] = Tensor::zeros({1});
  const std::string p = dir.file("reserved.safetensors");
  CHECK(error_of([&] { eng::save_checkpoint(p, ck); }).find("reserved for optimizer state") != std::string::npos);
  CHECK_FALSE(fs::exists(p));
}

TEST_CASE("a failed save leaves the previous checkpoint loadable") {
  TempDir dir("ck_atomic");
  const std::string path = dir.file("last.safetensors");
  Checkpoint ck = sample_checkpoint();
  eng::save_checkpoint(path, ck);

  Checkpoint next = ck;
  next.step = 2000;
  next.optimizer_state["exp_avg.mask_token"] = Tensor();  // fails while preparing the data
  CHECK_THROWS_AS(eng::save_checkpoint(path, next), eng::Error);
  // and a write that cannot even start: the old file under a name that leaves no room for the temporary file's
  const std::string tight = testutil::name_without_room_for_temporary(dir, ".safetensors");
  fs::copy_file(path, tight);
  next.optimizer_state["exp_avg.mask_token"] = Tensor::zeros({1, 1, 8});
  CHECK(error_of([&] { eng::save_checkpoint(tight, next); }).find("cannot create the temporary file") !=
        std::string::npos);
  CHECK(eng::load_checkpoint(tight).step == 1234);

  Checkpoint back = eng::load_checkpoint(path);
  CHECK(back.step == 1234);
  CHECK(same_bits(back.optimizer_state.at("exp_avg.mask_token"), ck.optimizer_state.at("exp_avg.mask_token")));

  eng::save_checkpoint(path, next);  // and a good save replaces it
  CHECK(eng::load_checkpoint(path).step == 2000);
}

TEST_CASE("check_state_matches names the first missing, unexpected or mismatched tensor") {
  const std::string file = "other.safetensors";
  auto expected = model_a();
  CHECK_NOTHROW(eng::check_state_matches(expected, model_a(), file));

  auto loaded = model_a();
  loaded.erase("mask_token");
  std::string msg = error_of([&] { eng::check_state_matches(expected, loaded, file); });
  CHECK(msg == "other.safetensors: tensor 'mask_token' is missing from the checkpoint (1 missing, 0 unexpected, 0 "
               "mismatched; a checkpoint from another model?)");

  loaded = model_a();
  loaded["blocks.1.attn.qkv.weight"] = ramp({24, 8}, 1.0);
  msg = error_of([&] { eng::check_state_matches(expected, loaded, file); });
  CHECK(msg.find("tensor 'blocks.1.attn.qkv.weight' is in the checkpoint but not in the model (0 missing, 1 unexpected") !=
        std::string::npos);

  loaded = model_a();
  loaded["patch_embed.proj.weight"] = ramp({8, 16}, 1.0);  // e.g. a different patch size
  msg = error_of([&] { eng::check_state_matches(expected, loaded, file); });
  CHECK(msg.find("tensor 'patch_embed.proj.weight' has shape [8, 16] in the checkpoint but [8, 12] in the model") !=
        std::string::npos);

  loaded = model_a();
  loaded["pos_embed"] = ramp({1, 5, 8}, 0.25, DType::F32);
  msg = error_of([&] { eng::check_state_matches(expected, loaded, file); });
  CHECK(msg.find("tensor 'pos_embed' is f32 in the checkpoint but bf16 in the model") != std::string::npos);

  // Several problems: the alphabetically first one is named, all are counted.
  loaded = model_a();
  loaded.erase("pos_embed");
  loaded.erase("mask_token");
  loaded["aaa"] = Tensor::zeros({1});
  loaded["patch_embed.proj.bias"] = ramp({9}, 1.0);
  msg = error_of([&] { eng::check_state_matches(expected, loaded, file); });
  CHECK(msg.find("tensor 'aaa' is in the checkpoint but not in the model (2 missing, 1 unexpected, 1 mismatched") !=
        std::string::npos);
}

TEST_CASE("a checkpoint from another model is refused by name after loading") {
  TempDir dir("ck_other");
  const std::string path = dir.file("other_model.safetensors");
  Checkpoint ck = sample_checkpoint();
  ck.weights.erase("mask_token");
  ck.weights["head.weight"] = ramp({10, 8}, 1.0);  // a classifier, not an MAE
  eng::save_checkpoint(path, ck);
  Checkpoint back = eng::load_checkpoint(path);
  std::string msg = error_of([&] { eng::check_state_matches(model_a(), back.weights, path); });
  CHECK(msg.find(path + ": tensor 'head.weight' is in the checkpoint but not in the model (1 missing, 1 unexpected") ==
        0);
}

}  // TEST_SUITE
