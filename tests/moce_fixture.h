// moce_fixture.h: the tiny end-to-end MoCE pipeline the suites after training share (moe train, export search): a
// generated image folder of three classes, a dense MAE (mae_test_tiny) pre-trained on it, its clusters, and moce train
// runs continued from it; plus running a subcommand as the binary does and reading its text and JSON-lines files.
#pragma once
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/image.h"
#include "engine/rng.h"
#include "moce/cmd/commands.h"
#include "tests/test_util.h"

namespace testutil {

// Runs a subcommand as the binary does; eng::Error propagates (error_of reads it).
inline int run(int (*cmd)(int, char**), const std::string& name, std::vector<std::string> args) {
  args.insert(args.begin(), {"moce", name});
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  return cmd(int(argv.size()), argv.data());
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), path << " missing");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// Three classes of 16x16 images (dark, reddish, bluish noise), 24 each: something to cluster and to reconstruct.
inline void write_three_class_folder(const std::string& root) {
  eng::Generator g(5);
  for (int c = 0; c < 3; c++) {
    const std::string dir = root + "/class" + std::to_string(c);
    std::filesystem::create_directories(dir);
    for (int i = 0; i < 24; i++) {
      std::vector<float> v = g.uniform({3, 16, 16}, 0.0, 0.4).to_vector<float>();
      for (int p = 0; p < 256; p++) {
        if (c == 1) v[size_t(p)] += 0.5f;
        if (c == 2) v[size_t(512 + p)] += 0.5f;
      }
      data::write_png(dir + "/" + std::to_string(i) + ".png", eng::Tensor::from_vector(v, {3, 16, 16}));
    }
  }
}

// One dense MAE (mae_test_tiny, 2 encoder blocks) and its clusters (3), made once per test program (moce_fixture()).
struct MoceFixture {
  TempDir dir{"moce_fixture"};
  std::string data = dir.file("data"), mae = dir.file("mae"), clusters = dir.file("clusters");
  MoceFixture() {
    write_three_class_folder(data);
    REQUIRE(run(moce::cmd_pretrain, "pretrain", {"--data", data, "--config", "mae_test_tiny", "--epochs", "1",
                                                 "--batch", "24", "--base-lr", "1e-3", "--out", mae, "--workers", "1"}) == 0);
    REQUIRE(run(moce::cmd_cluster, "cluster", {"--checkpoint", mae + "/weights.safetensors", "--data", data,
                                               "--clusters", "3", "--out", clusters, "--workers", "1"}) == 0);
  }
  std::string init() const { return mae + "/weights.safetensors"; }
  // A moce train run of `epochs` epochs of 3 steps (batch 24); extra flags after.
  int train(const std::string& method, const std::string& out, std::vector<std::string> extra = {}) const {
    std::vector<std::string> args = {"--method", method, "--init", init(), "--data", data, "--epochs", "2",
                                     "--batch", "24", "--log-every", "1", "--workers", "1", "--out", out};
    if (method == "moce") args.insert(args.end(), {"--clusters", clusters});
    args.insert(args.end(), extra.begin(), extra.end());
    return run(moce::cmd_train, "train", args);
  }
};

inline MoceFixture& moce_fixture() {
  static MoceFixture f;
  return f;
}

}  // namespace testutil
