// test_pretrain.cpp: the `moce pretrain` command end to end on a small generated image folder:
// resume continues bit for bit (and cuts metrics.jsonl back to its checkpoint), corrupt images are skipped and counted (or fail under --strict),
// bad flags and missing folders give one-line errors, a diverging run stops on the non-finite loss, and
// `--device cuda` without a GPU (or in a build without CUDA) fails at once with one line naming the flag.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "data/image.h"
#include "engine/io/checkpoint.h"
#include "engine/backend.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/cmd/commands.h"
#include "moce/train/pretrain.h"

using namespace eng;

namespace {

std::string g_last_error;

std::string temp_dir(const std::string& tag) {
  std::string d = "build/test-tmp/pretrain-" + tag;
  CHECK(std::system(("rm -rf " + d + " && mkdir -p " + d).c_str()) == 0);
  return d;
}

// root/<class>/<i>.png: smooth random colour fields (16x16), so there is something to learn.
std::string make_folder(const std::string& root, int per_class) {
  Generator g(99);
  for (int c = 0; c < 2; c++) {
    std::string dir = root + "/class" + std::to_string(c);
    ::mkdir(dir.c_str(), 0755);
    for (int i = 0; i < per_class; i++) {
      Tensor base = g.uniform({3, 1, 1}, 0.2, 0.8);
      Tensor ramp = Tensor::arange(16, DType::F32).to(DType::F32).reshape({1, 1, 16}) * (c ? 0.02 : -0.02);
      Tensor img = clamp(base.expand({3, 16, 16}) + ramp + g.uniform({3, 16, 16}, 0.0, 0.1), 0.0, 1.0);
      data::write_png(dir + "/" + std::to_string(i) + ".png", img);
    }
  }
  return root;
}

int run(std::vector<std::string> args) {
  args.insert(args.begin(), {"moce", "pretrain"});
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  g_last_error.clear();
  try {
    return moce::cmd_pretrain(int(argv.size()), argv.data());
  } catch (const Error& e) {
    g_last_error = e.what();
    return 1;
  }
}

int run_eval(std::vector<std::string> args) {
  args.insert(args.begin(), {"moce", "eval-mae"});
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  g_last_error.clear();
  try {
    return moce::cmd_eval_mae(int(argv.size()), argv.data());
  } catch (const Error& e) {
    g_last_error = e.what();
    return 1;
  }
}

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::vector<std::string> epoch_loss_hex(const std::string& metrics) {
  std::ifstream f(metrics);
  std::vector<std::string> v;
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("train_loss_hex")) v.push_back(j["train_loss_hex"]);
  }
  return v;
}

bool same_tensors(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [n, t] : a) {
    auto it = b.find(n);
    if (it == b.end() || it->second.nbytes() != t.nbytes()) return false;
    if (std::memcmp(t.contiguous().raw_data(), it->second.contiguous().raw_data(), t.nbytes()) != 0) return false;
  }
  return true;
}

std::vector<std::string> common(const std::string& data, const std::string& out) {
  return {"--data", data, "--config", "mae_test_tiny", "--batch", "8", "--out", out, "--workers", "2",
          "--base-lr", "1e-3", "--warmup-epochs", "1", "--log-every", "2"};
}

}  // namespace

TEST_SUITE("pretrain") {
  TEST_CASE("resume continues exactly: losses and weights equal an uninterrupted run, bit for bit") {
    std::string root = temp_dir("resume");
    ::mkdir((root + "/data").c_str(), 0755);
    make_folder(root + "/data", 20);  // 40 images -> 5 batches of 8
    auto args_full = common(root + "/data", root + "/full");
    args_full.insert(args_full.end(), {"--epochs", "3"});
    REQUIRE(run(args_full) == 0);
    auto args_part = common(root + "/data", root + "/part");
    args_part.insert(args_part.end(), {"--epochs", "3", "--stop-after", "1"});
    REQUIRE(run(args_part) == 0);
    REQUIRE(run({"--resume", root + "/part"}) == 0);
    auto full = epoch_loss_hex(root + "/full/metrics.jsonl");
    auto part = epoch_loss_hex(root + "/part/metrics.jsonl");
    REQUIRE(full.size() == 3);
    CHECK(part == full);
    CHECK(same_tensors(load_safetensors(root + "/full/weights.safetensors").tensors,
                       load_safetensors(root + "/part/weights.safetensors").tensors));
  }

  TEST_CASE("a light checkpoint (no optimizer state) resumes with AdamW's moments restarted, and says so") {
    std::string root = temp_dir("resume-light");
    ::mkdir((root + "/data").c_str(), 0755);
    make_folder(root + "/data", 20);
    auto args_part = common(root + "/data", root + "/part");
    args_part.insert(args_part.end(), {"--epochs", "2", "--stop-after", "1"});
    REQUIRE(run(args_part) == 0);
    auto args_full = common(root + "/data", root + "/full");
    args_full.insert(args_full.end(), {"--epochs", "2"});
    REQUIRE(run(args_full) == 0);
    // What results/tin-mae30/light_checkpoint.py writes: the same file without the optimizer's tensors and state.
    const std::string ck_path = root + "/part/checkpoint-last.safetensors";
    Checkpoint ck = load_checkpoint(ck_path);
    REQUIRE(!ck.optimizer_state.empty());
    ck.optimizer_state.clear();
    ck.optimizer = nlohmann::json::object();
    save_checkpoint(ck_path, ck);
    REQUIRE(run({"--resume", root + "/part"}) == 0);
    auto full = epoch_loss_hex(root + "/full/metrics.jsonl");
    auto part = epoch_loss_hex(root + "/part/metrics.jsonl");
    REQUIRE(full.size() == 2);
    REQUIRE(part.size() == 2);
    CHECK(part[0] == full[0]);  // the first epoch ran before the checkpoint
    CHECK(part[1] != full[1]);  // fresh moments: a different second epoch, as the note says
    std::ifstream m(root + "/part/metrics.jsonl");
    std::string text((std::istreambuf_iterator<char>(m)), std::istreambuf_iterator<char>());
    CHECK(text.find("AdamW moments restarted") != std::string::npos);
  }

  TEST_CASE("resume cuts metrics.jsonl back to the checkpoint's epochs: an interrupted epoch's lines go, earlier ones stay") {
    std::string root = temp_dir("resume-metrics");
    ::mkdir((root + "/data").c_str(), 0755);
    make_folder(root + "/data", 8);  // 16 images -> 2 steps of 8 per epoch, one log line each (--log-every 2)
    auto args = common(root + "/data", root + "/run");
    args.insert(args.end(), {"--epochs", "2", "--stop-after", "1"});
    REQUIRE(run(args) == 0);
    const std::string metrics = root + "/run/metrics.jsonl";
    auto lines_of = [](const std::string& path) {
      std::ifstream f(path);
      std::vector<std::string> v;
      for (std::string line; std::getline(f, line);) v.push_back(line);
      return v;
    };
    const std::vector<std::string> first_session = lines_of(metrics);
    REQUIRE(first_session.size() == 2);  // the log line of step 2 and the epoch line
    // What a session killed during epoch 2 leaves: its log line and a last line cut short.
    {
      std::ofstream f(metrics, std::ios::app);
      f << R"({"epoch": 2, "step": 4, "loss": 99.5})" << "\n" << R"({"epoch": 2, "tra)";
    }
    REQUIRE(run({"--resume", root + "/run"}) == 0);
    const std::vector<std::string> after = lines_of(metrics);
    REQUIRE(after.size() == 4);
    CHECK(std::equal(first_session.begin(), first_session.end(), after.begin()));
    int step4_lines = 0;
    for (const std::string& line : after) {
      auto j = nlohmann::json::parse(line);  // every line is JSON again
      CHECK(j.value("loss", 0.0) != 99.5);
      step4_lines += j.value("step", 0) == 4;
    }
    CHECK(step4_lines == 1);
    CHECK(epoch_loss_hex(metrics).size() == 2);
  }

  TEST_CASE("corrupt images are skipped and counted; --strict fails naming the file") {
    std::string root = temp_dir("corrupt");
    ::mkdir((root + "/data").c_str(), 0755);
    make_folder(root + "/data", 8);
    {
      std::ofstream f(root + "/data/class0/broken.png");
      f << "this is not a png";
    }
    auto args = common(root + "/data", root + "/run");
    args.insert(args.end(), {"--epochs", "1"});
    REQUIRE(run(args) == 0);
    std::ifstream m(root + "/run/metrics.jsonl");
    std::string line, last;
    while (std::getline(m, line)) last = line;
    CHECK(nlohmann::json::parse(last)["skipped_images"] == 1);
    args.insert(args.end(), {"--strict", "--force"});  // a new run on the same folder
    CHECK(run(args) == 1);
    CHECK(g_last_error.find("broken.png") != std::string::npos);
  }

  TEST_CASE("bad flags and missing data give one-line errors") {
    std::string root = temp_dir("bad");
    CHECK(run({"--data", root + "/nope", "--out", root + "/run"}) == 1);
    CHECK(g_last_error.find(root + "/nope") != std::string::npos);
    CHECK(run({"--config", "mae_nope", "--out", root + "/run"}) == 1);
    CHECK(g_last_error.find("unknown model config") != std::string::npos);
    CHECK(run({"--epochs", "two"}) == 1);
    CHECK(g_last_error.find("--epochs expects an integer") != std::string::npos);
    CHECK(run({"--bogus", "1"}) == 1);
    CHECK(g_last_error.find("unknown flag --bogus") != std::string::npos);
    CHECK(run({"--resume", root + "/nothing"}) == 1);
    CHECK(g_last_error.find("no checkpoint-last.safetensors") != std::string::npos);
    // bf16 mixed precision is CUDA only: on the CPU it stops before anything is read or written.
    CHECK(run({"--precision", "bf16", "--data", root + "/nope", "--out", root + "/run-bf16"}) == 1);
    CHECK_MESSAGE(g_last_error.find("--precision bf16: bf16 mixed precision needs --device cuda") != std::string::npos,
                  g_last_error);
    CHECK(!exists(root + "/run-bf16"));
    CHECK(run({"--precision", "tf32", "--data", root + "/nope", "--out", root + "/run-tf32"}) == 1);
    CHECK_MESSAGE(g_last_error.find("--precision tf32: TF32 tensor-core GEMMs need --device cuda") != std::string::npos,
                  g_last_error);
    CHECK(!exists(root + "/run-tf32"));
    CHECK(run({"--precision", "fp8", "--out", root + "/run-fp8"}) == 1);
    CHECK_MESSAGE(g_last_error.find("--precision fp8: unknown precision 'fp8'; known: f32, tf32, bf16") != std::string::npos,
                  g_last_error);
  }

  TEST_CASE("a diverging run stops at the non-finite loss and keeps its last good checkpoint") {
    std::string root = temp_dir("diverge");
    ::mkdir((root + "/data").c_str(), 0755);
    make_folder(root + "/data", 16);
    auto args = common(root + "/data", root + "/run");
    args.insert(args.end(), {"--epochs", "2", "--stop-after", "1"});
    REQUIRE(run(args) == 0);
    std::string ck = root + "/run/checkpoint-last.safetensors";
    Checkpoint before = load_checkpoint(ck);
    // Resume the same run with an absurd learning rate: edit the saved run config, as a user might by mistake.
    before.config["run"]["base_lr"] = 1e12;
    save_checkpoint(ck, before);
    CHECK(run({"--resume", root + "/run"}) == 2);
    Checkpoint after = load_checkpoint(ck);
    CHECK(after.rng["next_epoch"] == 1);  // the good checkpoint is still the one of epoch 1
  }

  TEST_CASE("--device cuda without a GPU fails at once, naming the flag and what is missing") {
    if (cuda_available()) {
      MESSAGE("skipped: a CUDA GPU is visible, so --device cuda trains (tests/gpu/test_gpu_pretrain.cpp covers that)");
      return;
    }
#ifdef ENGINE_WITH_CUDA
    const std::string why = "no CUDA GPU was found";
#else
    const std::string why = "this build has no CUDA backend";
#endif
    auto one_line_naming = [&](const std::string& flag_and_value) {
      CHECK_MESSAGE(g_last_error.find(flag_and_value) != std::string::npos, g_last_error);
      CHECK_MESSAGE(g_last_error.find(why) != std::string::npos, g_last_error);
      CHECK(g_last_error.find('\n') == std::string::npos);
    };
    std::string root = temp_dir("nogpu");
    // The data folder does not exist and nothing is written: the device is checked before anything else.
    CHECK(run({"--device", "cuda", "--data", root + "/nope", "--out", root + "/run"}) == 1);
    one_line_naming("--device cuda: ");
    CHECK(!exists(root + "/run"));
    CHECK(run({"--device", "cuda:1", "--data", root + "/nope", "--out", root + "/run"}) == 1);
    one_line_naming("--device cuda:1: ");
    CHECK(run_eval({"--device", "cuda", "--random-init", "--config", "mae_test_tiny", "--out", root + "/eval"}) == 1);
    one_line_naming("--device cuda: ");
    CHECK(!exists(root + "/eval"));
    // A run saved with --device cuda (say, on another machine) names where the device came from when resumed here.
    ::mkdir((root + "/data").c_str(), 0755);
    make_folder(root + "/data", 4);
    auto args = common(root + "/data", root + "/saved");
    args.insert(args.end(), {"--epochs", "2", "--stop-after", "1"});
    REQUIRE(run(args) == 0);
    std::string ck = root + "/saved/checkpoint-last.safetensors";
    Checkpoint c = load_checkpoint(ck);
    c.config["run"]["device"] = "cuda";
    save_checkpoint(ck, c);
    CHECK(run({"--resume", root + "/saved"}) == 1);
    one_line_naming("--device cuda (saved in " + ck);
    // ... and --device cpu on the resume goes on where it stopped.
    CHECK(run({"--resume", root + "/saved", "--device", "cpu"}) == 0);
    CHECK(load_checkpoint(ck).rng["next_epoch"] == 2);
    // Not a device at all.
    CHECK(run({"--device", "tpu"}) == 1);
    CHECK(g_last_error.find("--device tpu: unknown device") != std::string::npos);
  }
}
