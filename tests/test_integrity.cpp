// test_integrity.cpp: files that cannot break the engine (issue 16, items 1 and 2).
//   - a model config read from a file (a checkpoint's config["model"], an exported ViT's config) is validated before
//     anything is built: zero or non-dividing sizes, non-integer sizes and a model too large for the machine's memory
//     give one line naming the file and the field, with no signal and no allocation;
//   - every tensor's CRC-32 is stored by our writer and verified by our reader (checked against a bitwise CRC-32 written
//     here), a damaged tensor is named, files without checksums still load;
//   - a run keeps checkpoint-last and checkpoint-prev, and a resume that finds the last damaged names the previous one
//     and how to use it; following that advice resumes;
//   - a NaN or infinity in a weight is reported with the weight's name and index when the model is loaded.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "data/image.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "model/mae.h"
#include "model/vit.h"
#include "moce/cmd/commands.h"
#include "moce/finetune/model_file.h"
#include "moce/train/checkpoint.h"
#include "test_util.h"

using eng::Tensor;
using nlohmann::json;
using testutil::error_of;
using testutil::TempDir;

namespace {

std::string g_error;

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// One line, naming each of `parts`.
void check_one_line_naming(const std::string& msg, const std::vector<std::string>& parts) {
  CHECK_MESSAGE(!msg.empty(), "no error");
  CHECK_MESSAGE(msg.find('\n') == std::string::npos, msg);
  for (const auto& p : parts) CHECK_MESSAGE(has(msg, p), "'" << p << "' not in: " << msg);
}

int run_command(int (*cmd)(int, char**), const char* name, std::vector<std::string> args) {
  args.insert(args.begin(), {"moce", name});
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  g_error.clear();
  try {
    return cmd(int(argv.size()), argv.data());
  } catch (const eng::Error& e) {
    g_error = e.what();
    return 1;
  }
}
int pretrain(const std::vector<std::string>& args) { return run_command(moce::cmd_pretrain, "pretrain", args); }
int eval_mae(const std::vector<std::string>& args) { return run_command(moce::cmd_eval_mae, "eval-mae", args); }

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Every file of a folder with its bytes: "nothing already written lost" means this map is unchanged.
std::map<std::string, std::string> folder_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().filename().string()] = read_all(e.path().string());
  return out;
}

// root/<class>/<i>.png, 16x16 noise images: enough for mae_test_tiny to run an epoch.
void make_images(const std::string& root, int per_class) {
  eng::Generator g(5);
  for (int c = 0; c < 2; c++) {
    const std::string dir = root + "/class" + std::to_string(c);
    std::filesystem::create_directories(dir);
    for (int i = 0; i < per_class; i++)
      data::write_png(dir + "/" + std::to_string(i) + ".png", g.uniform({3, 16, 16}, 0.0, 1.0));
  }
}

// A real pre-training run folder (mae_test_tiny, 16 images of 16 px, batch 8: 2 steps per epoch), one checkpoint
// per epoch.
std::vector<std::string> run_args(const std::string& data, const std::string& out, int epochs) {
  return {"--data", data, "--config", "mae_test_tiny", "--batch", "8", "--out", out, "--workers", "0",
          "--base-lr", "1e-3", "--warmup-epochs", "1", "--epochs", std::to_string(epochs), "--save-every", "1"};
}

// The same file with its metadata config["model"][key] replaced (the tensors, and so their checksums, unchanged).
void edit_model_config(const std::string& path, const std::string& key, const json& value) {
  eng::SafetensorsFile f = eng::load_safetensors(path);
  json config = json::parse(f.metadata.at("config"));
  config["model"][key] = value;
  f.metadata["config"] = config.dump();
  eng::save_safetensors(path, f.tensors, f.metadata);
}

// A bitwise CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320): the reference for zlib's.
uint32_t reference_crc32(const uint8_t* p, size_t n) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// The raw header JSON of a safetensors file, read here byte by byte (not through the engine's reader).
json raw_header(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  return json::parse(bytes.substr(8, size_t(n)));
}
uint64_t data_start(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  return 8 + n;
}

// Flips one bit inside tensor `name`'s data in the file, leaving the header as it was.
void flip_bit_in(const std::string& path, const std::string& name) {
  std::string bytes = read_all(path);
  const json h = raw_header(bytes);
  const uint64_t begin = h.at(name).at("data_offsets")[0].get<uint64_t>();
  bytes[size_t(data_start(bytes) + begin + 3)] ^= 0x10;
  write_all(path, bytes);
}

long max_rss_kib() {
  struct rusage u;
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

std::map<std::string, Tensor> some_tensors() {
  eng::Generator g(3);
  return {{"a.weight", g.normal({4, 5})},
          {"b.bias", Tensor::from_vector(std::vector<double>{1, -2, 3}, {3})},
          {"c.half", Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2}, eng::DType::BF16)},
          {"d.index", Tensor::from_vector(std::vector<int64_t>{7, 8}, {2})},
          {"e.empty", Tensor::empty({0, 3})}};
}

}  // namespace

TEST_SUITE("integrity") {
  TEST_CASE("config: every named config passes the one validation; bad fields are one line naming the field") {
    for (const std::string& name : model::mae_config_names()) {
      model::MaeConfig c = model::mae_config(name);
      CHECK_MESSAGE(error_of([&] { model::validate(c, "x"); }) == "", name);
    }
    auto mae_error = [](const std::function<void(model::MaeConfig&)>& edit) {
      model::MaeConfig c = model::mae_config("mae_test_tiny");
      edit(c);
      return error_of([&] { model::validate(c, "f.safetensors"); });
    };
    CHECK(mae_error([](model::MaeConfig& c) { c.patch_size = 0; }) ==
          "f.safetensors: MAE config mae_test_tiny: patch_size must be positive, got 0");
    CHECK(mae_error([](model::MaeConfig& c) { c.patch_size = 3; }) ==
          "f.safetensors: MAE config mae_test_tiny: img_size 16 is not divisible by patch_size 3");
    CHECK(mae_error([](model::MaeConfig& c) { c.num_heads = 3; }) ==
          "f.safetensors: MAE config mae_test_tiny: embed_dim 16 is not divisible by num_heads 3");
    CHECK(has(mae_error([](model::MaeConfig& c) { c.embed_dim = 18, c.num_heads = 2; }), "embed_dim 18 is not divisible by 4"));
    CHECK(has(mae_error([](model::MaeConfig& c) { c.decoder_num_heads = 0; }), "decoder_num_heads must be positive, got 0"));
    CHECK(has(mae_error([](model::MaeConfig& c) { c.decoder_num_heads = 3; }),
              "decoder_embed_dim 8 is not divisible by decoder_num_heads 3"));
    CHECK(has(mae_error([](model::MaeConfig& c) { c.decoder_depth = -1; }), "decoder_depth must be >= 0, got -1"));
    CHECK(has(mae_error([](model::MaeConfig& c) { c.mlp_ratio = std::numeric_limits<double>::quiet_NaN(); }),
              "mlp_ratio nan"));
    CHECK(has(mae_error([](model::MaeConfig& c) { c.mlp_ratio = std::numeric_limits<double>::infinity(); }),
              "mlp_ratio inf"));
    CHECK(has(mae_error([](model::MaeConfig& c) { c.in_chans = -3; }), "in_chans must be positive, got -3"));
    // The constructor runs the same validation: a zero patch size never reaches a division (SIGFPE before).
    model::MaeConfig zero = model::mae_config("mae_test_tiny");
    zero.patch_size = 0;
    CHECK(error_of([&] { model::MaskedAutoencoder(zero, 1); }) ==
          "MAE config mae_test_tiny: patch_size must be positive, got 0");
    // Sizes in JSON must be integers: 4.5 would be truncated, 1e300 undefined behaviour.
    json j = model::config_to_json(model::mae_config("mae_test_tiny"));
    j["patch_size"] = 4.5;
    CHECK(error_of([&] { model::mae_config_from_json(j, "g.safetensors"); }) ==
          "g.safetensors: MAE config: config key \"patch_size\" must be an integer, found 4.5");
    j["patch_size"] = 1e300;
    CHECK(has(error_of([&] { model::mae_config_from_json(j, "g"); }), "\"patch_size\" must be an integer"));
    j = model::config_to_json(model::mae_config("mae_test_tiny"));
    j.erase("decoder_depth");
    CHECK(has(error_of([&] { model::mae_config_from_json(j, "g"); }), "decoder_depth"));
    CHECK(has(error_of([&] { model::mae_config_from_json(json::array(), "g"); }), "g: MAE config is a JSON array"));
  }

  TEST_CASE("config: a model larger than the machine's memory is refused by arithmetic, before any allocation") {
    const uint64_t memory = model::machine_memory_bytes();
    REQUIRE(memory > 0);
    model::MaeConfig c = model::mae_config("mae_test_tiny");
    c.embed_dim = 10000000, c.num_heads = 1;  // 12 x 1e14 x depth parameters
    const long rss_before = max_rss_kib();
    const auto t0 = std::chrono::steady_clock::now();
    const std::string msg = error_of([&] { model::MaskedAutoencoder(c, 1); });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    check_one_line_naming(msg, {"MAE config mae_test_tiny: too large for this machine", "embed_dim 10000000",
                                "GiB of memory"});
    CHECK(seconds < 1.0);
    CHECK(max_rss_kib() - rss_before < 64 * 1024);  // nothing the size of the model was touched
    // The same bound for a ViT, and the figure is this machine's physical memory.
    model::VitConfig v;
    v.img_size = 16, v.patch_size = 4, v.embed_dim = 1 << 20, v.num_heads = 1, v.depth = 1;
    const std::string vmsg = error_of([&] { model::validate(v, "--flag"); });
    check_one_line_naming(vmsg, {"--flag: ViT config custom: too large", fmt::format("{:.3g} GiB of memory",
                                                                                   double(memory) / double(1 << 30))});
    // Just inside the bound is accepted: the tiny model's figure is far below any machine.
    CHECK(error_of([&] { model::validate(model::mae_config("mae_tiny_p4_32")); }) == "");
  }

  TEST_CASE("config: a checkpoint whose stored config is edited fails in load_mae, pretrain --resume, eval-mae") {
    TempDir dir("integrity_cfg");
    make_images(dir.file("data"), 8);
    REQUIRE(pretrain(run_args(dir.file("data"), dir.file("run"), 2) ) == 0);
    const std::string ck = dir.file("run") + "/checkpoint-last.safetensors";
    const std::string pristine = read_all(ck);
    struct Edit {
      std::string key;
      json value;
      std::string says;
    };
    const std::vector<Edit> edits = {
        {"patch_size", 0, "patch_size must be positive, got 0"},
        {"patch_size", 5, "img_size 16 is not divisible by patch_size 5"},
        {"num_heads", 3, "embed_dim 16 is not divisible by num_heads 3"},
        {"decoder_num_heads", 0, "decoder_num_heads must be positive, got 0"},
        {"embed_dim", 10000000, "too large for this machine"},
        {"depth", "2", "depth"},
    };
    for (const Edit& e : edits) {
      CAPTURE(e.key);
      write_all(ck, pristine);
      edit_model_config(ck, e.key, e.value);
      const auto before = folder_bytes(dir.file("run"));
      // The library loader (eval-mae, cluster, rank-blocks go through it).
      check_one_line_naming(error_of([&] { moce::load_mae(ck, "", false, 0); }), {ck, "config[\"model\"]", e.says});
      // moce pretrain --resume: refused before anything in the run folder changes.
      CHECK(pretrain({"--resume", dir.file("run"), "--epochs", "3"}) == 1);
      check_one_line_naming(g_error, {ck, e.says});
      CHECK(folder_bytes(dir.file("run")) == before);
      // moce eval-mae --checkpoint: refused before its --out folder is made.
      CHECK(eval_mae({"--checkpoint", ck, "--train-data", dir.file("data"), "--test-data", dir.file("data"), "--out",
                      dir.file("eval")}) == 1);
      check_one_line_naming(g_error, {ck, e.says});
      CHECK_FALSE(std::filesystem::exists(dir.file("eval")));
    }
  }

  TEST_CASE("config: an exported ViT's edited config fails in load_vit and the fine-tuning loader, naming the file") {
    TempDir dir("integrity_vit");
    model::VitConfig c;
    c.name = "tiny";
    c.img_size = 16, c.patch_size = 4, c.embed_dim = 16, c.depth = 1, c.num_heads = 2;
    model::VisionTransformer vit(c, 1);
    const std::string path = dir.file("export.safetensors");
    for (const auto& [key, value, says] : std::vector<std::tuple<std::string, json, std::string>>{
             {"patch_size", 0, "patch_size must be positive, got 0"},
             {"num_heads", 5, "embed_dim 16 is not divisible by num_heads 5"},
             {"embed_dim", 1 << 22, "too large for this machine"},
             {"mlp_ratio", -1.0, "mlp_ratio -1"},
             {"depth", 1.5, "\"depth\" must be an integer"}}) {
      CAPTURE(key);
      json j = model::config_to_json(c);
      j[key] = value;
      eng::save_safetensors(path, vit.state_dict(), {{"format", "moce-vit-export"}, {"config", j.dump()}});
      check_one_line_naming(error_of([&] { model::load_vit(path); }), {path, says});
      check_one_line_naming(error_of([&] { moce::finetune::load_encoder(path); }), {path, says});
    }
  }

  TEST_CASE("checksums: the writer stores zlib's CRC-32 of each tensor, equal to a bitwise CRC-32 of its bytes") {
    TempDir dir("integrity_crc");
    const std::string path = dir.file("t.safetensors");
    eng::save_safetensors(path, some_tensors(), {{"note", "kept"}});
    const std::string bytes = read_all(path);
    const json h = raw_header(bytes);
    const json sums = json::parse(h.at("__metadata__").at("checksums").get<std::string>());
    CHECK(sums.size() == some_tensors().size());
    for (const auto& [name, t] : some_tensors()) {
      const uint64_t b = h.at(name).at("data_offsets")[0], e = h.at(name).at("data_offsets")[1];
      const uint32_t want =
          reference_crc32(reinterpret_cast<const uint8_t*>(bytes.data()) + data_start(bytes) + b, size_t(e - b));
      CHECK_MESSAGE(sums.at(name) == fmt::format("{:08x}", want), name);
    }
    CHECK(sums.at("e.empty") == "00000000");
    // The reader verifies them and keeps the key out of the caller's metadata.
    eng::SafetensorsFile f = eng::load_safetensors(path);
    CHECK(f.checksummed);
    CHECK(f.metadata == std::map<std::string, std::string>{{"note", "kept"}});
    // The key is the writer's: a caller cannot pass its own.
    CHECK(has(error_of([&] { eng::save_safetensors(dir.file("u.safetensors"), some_tensors(), {{"checksums", "{}"}}); }),
              "metadata key \"checksums\" is reserved"));
    CHECK_FALSE(std::filesystem::exists(dir.file("u.safetensors")));
  }

  TEST_CASE("checksums: a flipped bit names the damaged tensor; a damaged checksum list is refused; old files load") {
    TempDir dir("integrity_flip");
    const std::string path = dir.file("t.safetensors");
    for (const std::string name : {"a.weight", "b.bias", "c.half", "d.index"}) {
      CAPTURE(name);
      eng::save_safetensors(path, some_tensors());
      flip_bit_in(path, name);
      const std::string msg = error_of([&] { eng::load_safetensors(path); });
      check_one_line_naming(msg, {path + ": tensor '" + name + "' is damaged (checksum ", " != stored "});
      const std::string bytes = read_all(path);
      const std::string mem_msg = error_of([&] {
        eng::parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "mem");
      });
      CHECK(mem_msg.rfind("mem: tensor '" + name + "' is damaged", 0) == 0);
      // A checkpoint says the same through its loader.
      CHECK(has(error_of([&] { eng::load_checkpoint(path); }), "tensor '" + name + "' is damaged"));
    }
    // A header whose checksum list was edited: a bad value, a missing tensor, a tensor the file lacks.
    auto with_sums = [&](const std::string& sums) {
      std::string h = "{\"__metadata__\":{\"checksums\":" + json(sums).dump() +
                      "},\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
      std::string bytes(8, '\0');
      for (int i = 0; i < 8; i++) bytes[size_t(i)] = char((h.size() >> (8 * i)) & 0xff);
      write_all(path, bytes + h + std::string(4, '\0'));
      return error_of([&] { eng::load_safetensors(path); });
    };
    // The CRC-32 of four zero bytes is 2144df1c (zlib.crc32(bytes(4)) in Python).
    CHECK(with_sums("{\"x\":\"2144df1c\"}") == "");
    CHECK(with_sums("{\"x\":\"00000000\"}") == path + ": tensor 'x' is damaged (checksum 2144df1c != stored 00000000)");
    CHECK(has(with_sums("{\"x\":\"zz\"}"), "the checksum of tensor 'x' is not 8 hex digits"));
    CHECK(has(with_sums("{}"), "tensor 'x' has no checksum"));
    CHECK(has(with_sums("{\"x\":\"2144df1c\",\"y\":\"00000000\"}"), "lists tensor 'y', which the file does not hold"));
    CHECK(has(with_sums("[1]"), "is not a JSON object of tensor checksums"));
    // A file without checksums (a converted official checkpoint, a file of results/) loads unverified.
    const std::string results_file = "results/tin-mae30/weights.safetensors";
    if (std::filesystem::exists(results_file)) {
      eng::SafetensorsFile f = eng::load_safetensors(results_file);
      CHECK_FALSE(f.checksummed);
      CHECK(f.tensors.size() > 100);
      CHECK(moce::load_mae(results_file, "", false, 0).config().embed_dim == 192);
    } else {
      MESSAGE("skipped the results/ file: not found (tests run from the repository root)");
    }
  }

  TEST_CASE("checkpoints: the run keeps the last two; a damaged last is refused naming checkpoint-prev, which resumes") {
    TempDir dir("integrity_resume");
    make_images(dir.file("data"), 8);
    const std::string run = dir.file("run");
    const std::string last = run + "/checkpoint-last.safetensors", prev = run + "/checkpoint-prev.safetensors";
    REQUIRE(pretrain(run_args(dir.file("data"), run, 3)) == 0);
    // 2 steps per epoch: the last holds epoch 3 (step 6), the previous epoch 2 (step 4).
    CHECK(eng::load_checkpoint(last).step == 6);
    CHECK(eng::load_checkpoint(prev).step == 4);
    CHECK(eng::load_checkpoint(prev).rng["next_epoch"] == 2);
    CHECK_FALSE(std::filesystem::exists(prev + ".link-tmp"));

    flip_bit_in(last, "blocks.0.attn.qkv.weight");
    const auto before = folder_bytes(run);
    CHECK(pretrain({"--resume", run, "--epochs", "4"}) == 1);
    check_one_line_naming(g_error, {"--resume " + run + ": the last checkpoint is damaged",
                                    "tensor 'blocks.0.attn.qkv.weight' is damaged", prev + " (step 4) is intact",
                                    "mv " + prev + " " + last});
    CHECK(folder_bytes(run) == before);  // nothing written, metrics.jsonl included

    // Doing what it says resumes from epoch 3, and the new checkpoints rotate again.
    std::filesystem::rename(prev, last);
    REQUIRE(pretrain({"--resume", run, "--epochs", "4"}) == 0);
    CHECK(eng::load_checkpoint(last).step == 8);
    CHECK(eng::load_checkpoint(prev).step == 6);

    // A missing last (a crash between the rotation's steps on a file system without hard links) names prev too.
    std::filesystem::remove(last);
    CHECK(pretrain({"--resume", run, "--epochs", "5"}) == 1);
    check_one_line_naming(g_error, {"no checkpoint-last.safetensors there", prev + " (step 6) is intact"});
    // Both gone bad: said so, nothing offered.
    std::filesystem::copy_file(prev, last);
    flip_bit_in(last, "norm.weight");
    flip_bit_in(prev, "norm.weight");
    CHECK(pretrain({"--resume", run, "--epochs", "5"}) == 1);
    check_one_line_naming(g_error, {"the last checkpoint is damaged", "the previous checkpoint is unusable too"});
  }

  TEST_CASE("non-finite weights: load_mae, eval-mae and the ViT loaders name the weight and the index") {
    TempDir dir("integrity_nan");
    model::MaskedAutoencoder mae(model::mae_config("mae_test_tiny"), 1);
    std::map<std::string, Tensor> w = mae.state_dict();
    const json config = {{"model", model::config_to_json(mae.config())}};
    for (const auto& [name, value, says] : std::vector<std::tuple<std::string, double, std::string>>{
             {"blocks.1.mlp.fc1.weight", std::numeric_limits<double>::quiet_NaN(), "(NaN) at index 7 "},
             {"decoder_pred.bias", std::numeric_limits<double>::infinity(), "(+inf) at index 7 "},
             {"cls_token", -std::numeric_limits<double>::infinity(), "(-inf) at index 7 "}}) {
      CAPTURE(name);
      std::map<std::string, Tensor> edited;
      for (const auto& [n, t] : w) edited[n] = t.clone();
      std::vector<float> v = edited[name].to_vector<float>();
      v[7] = float(value);
      edited[name] = Tensor::from_vector(v, edited[name].shape());
      const std::string path = dir.file("weights.safetensors");
      eng::save_safetensors(path, edited, {{"config", config.dump()}});
      check_one_line_naming(error_of([&] { moce::load_mae(path, "", false, 0); }),
                            {path + ": weight '" + name + "' holds a non-finite value " + says});
      make_images(dir.file("data"), 4);
      CHECK(eval_mae({"--checkpoint", path, "--train-data", dir.file("data"), "--test-data", dir.file("data"), "--out",
                      dir.file("eval"), "--probe-epochs", "1"}) == 1);
      check_one_line_naming(g_error, {path + ": weight '" + name + "' holds a non-finite value"});
      CHECK_FALSE(has(g_error, "feature"));
    }
    // An exported ViT (load_vit, and the fine-tuning loader over it).
    model::VitConfig c;
    c.name = "tiny";
    c.img_size = 16, c.patch_size = 4, c.embed_dim = 16, c.depth = 1, c.num_heads = 2;
    model::VisionTransformer vit(c, 1);
    std::map<std::string, Tensor> vw;
    for (const auto& [n, t] : vit.state_dict()) vw[n] = t.clone();
    std::vector<float> v = vw["blocks.0.attn.proj.weight"].to_vector<float>();
    v[3] = std::numeric_limits<float>::quiet_NaN();
    vw["blocks.0.attn.proj.weight"] = Tensor::from_vector(v, vw["blocks.0.attn.proj.weight"].shape());
    const std::string path = dir.file("export.safetensors");
    eng::save_safetensors(path, vw, {{"format", "moce-vit-export"}, {"config", model::config_to_json(c).dump()}});
    check_one_line_naming(error_of([&] { model::load_vit(path); }),
                          {path + ": weight 'blocks.0.attn.proj.weight' holds a non-finite value (NaN) at index 3 "});
    check_one_line_naming(error_of([&] { moce::finetune::load_encoder(path); }),
                          {"weight 'blocks.0.attn.proj.weight' holds a non-finite value (NaN) at index 3"});
    // The same file without its metadata (timm's form, sizes from the shapes) too.
    eng::save_safetensors(path, vw);
    check_one_line_naming(error_of([&] { moce::finetune::load_encoder(path, 2); }),
                          {path + ": weight 'blocks.0.attn.proj.weight' holds a non-finite value (NaN)"});
  }
}
