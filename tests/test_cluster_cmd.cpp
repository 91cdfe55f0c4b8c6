// test_cluster_cmd.cpp: `moce cluster` end to end on a tiny MAE checkpoint over an image folder written here (and
// over Fashion-MNIST when installed): the files parse, clusters.json's figures match a recomputation from the files
// (sizes, entropy, purity and NMI by an independent f64 count, the plain argmax from the bank and the centroids), the
// sample grid's size and pixels, bitwise identical reruns with 1 and 2 threads, reuse of a bank, the k-means peer
// (--algorithm kmeans) and the scores against semantic groups (--groups), and every bad input as a one-line error that
// leaves an existing run folder as it was.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "data/idx.h"
#include "data/image.h"
#include "engine/backend.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/rng.h"
#include "model/mae.h"
#include "moce/cluster/io.h"
#include "moce/cmd/commands.h"
#include "tests/test_util.h"

using eng::Tensor;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using testutil::error_of;
using testutil::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), path << " missing");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
json read_json(const std::string& path) { return json::parse(read_bytes(path)); }

// Every file of a folder and its bytes: what "left untouched" compares.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = read_bytes(e.path().string());
  return m;
}

// Four classes of 16x16 images a random encoder tells apart: a dark, a bright, a red and a blue noise.
void write_four_class_folder(const std::string& root, int64_t per_class) {
  eng::Generator g(11);
  for (int64_t c = 0; c < 4; c++) {
    fs::create_directories(root + "/class" + std::to_string(c));
    for (int64_t i = 0; i < per_class; i++) {
      std::vector<float> v = g.uniform({3, 16, 16}, 0.0, 0.4).to_vector<float>();
      for (int64_t p = 0; p < 256; p++) {
        if (c == 1) for (int ch = 0; ch < 3; ch++) v[size_t(ch * 256 + p)] += 0.6f;
        if (c == 2) v[size_t(p)] += 0.6f;
        if (c == 3) v[size_t(512 + p)] += 0.6f;
      }
      data::write_png(root + "/class" + std::to_string(c) + "/" + std::to_string(100 + i) + ".png",
                      Tensor::from_vector(v, {3, 16, 16}));
    }
  }
}

// A moce checkpoint of the random-init tiny MAE, written as the commands read it (weights + config metadata).
void write_tiny_checkpoint(const std::string& path, uint64_t seed, bool nan_weights = false) {
  model::MaeConfig cfg = model::mae_config("mae_test_tiny");
  model::MaskedAutoencoder mae(cfg, seed);
  eng::Checkpoint ck;
  ck.weights = mae.state_dict();
  if (nan_weights) ck.weights["norm.bias"] = Tensor::full(ck.weights["norm.bias"].shape(), NAN);
  ck.config = {{"model", model::config_to_json(cfg)}};
  ck.step = 1;
  eng::save_checkpoint(path, ck);
}

int run_cluster(std::vector<std::string> args) {
  args.insert(args.begin(), {"moce", "cluster"});
  std::vector<char*> p;
  for (auto& s : args) p.push_back(s.data());
  return moce::cmd_cluster(int(p.size()), p.data());
}

// Purity and NMI (arithmetic normaliser) of an assignment against labels 0..L-1, from the joint counts in f64.
std::pair<double, double> brute_purity_nmi(const std::vector<int32_t>& a, const std::vector<int64_t>& labels, int64_t M,
                                           int64_t L) {
  const size_t n = a.size();
  std::vector<std::vector<double>> joint(size_t(M), std::vector<double>(size_t(L), 0.0));
  for (size_t i = 0; i < n; i++) joint[size_t(a[i])][size_t(labels[i])] += 1;
  std::vector<double> row(size_t(M), 0.0), col(size_t(L), 0.0);
  for (int64_t j = 0; j < M; j++)
    for (int64_t l = 0; l < L; l++) row[size_t(j)] += joint[size_t(j)][size_t(l)], col[size_t(l)] += joint[size_t(j)][size_t(l)];
  double hu = 0, hv = 0, mi = 0, hit = 0;
  for (int64_t j = 0; j < M; j++) {
    const double pj = row[size_t(j)] / double(n);
    if (pj > 0) hu -= pj * std::log(pj);
    double best = 0;
    for (int64_t l = 0; l < L; l++) {
      const double pjl = joint[size_t(j)][size_t(l)] / double(n);
      if (pjl > 0) mi += pjl * std::log(pjl / (pj * col[size_t(l)] / double(n)));
      best = std::max(best, joint[size_t(j)][size_t(l)]);
    }
    hit += best;
  }
  for (int64_t l = 0; l < L; l++)
    if (col[size_t(l)] > 0) hv -= col[size_t(l)] / double(n) * std::log(col[size_t(l)] / double(n));
  return {hit / double(n), hu + hv > 0 ? mi / ((hu + hv) / 2) : 1.0};
}

// The independent recomputation: sizes, min/median/max, entropy, purity, NMI from counts in f64.
void check_summary(const json& s, const std::vector<int32_t>& a, const std::vector<int64_t>& labels, int64_t M,
                   int64_t L) {
  const size_t n = a.size();
  std::vector<int64_t> sizes(size_t(M), 0);
  for (size_t i = 0; i < n; i++) sizes[size_t(a[i])]++;
  CHECK(s["sizes"].get<std::vector<int64_t>>() == sizes);
  int64_t total = 0, empty = 0;
  for (int64_t v : sizes) total += v, empty += v == 0;
  CHECK(total == int64_t(n));
  CHECK(s["num_empty"].get<int64_t>() == empty);
  std::vector<int64_t> sorted = sizes;
  std::sort(sorted.begin(), sorted.end());
  CHECK(s["min"].get<int64_t>() == sorted.front());
  CHECK(s["max"].get<int64_t>() == sorted.back());
  const double median = M % 2 ? double(sorted[size_t(M / 2)]) : (sorted[size_t(M / 2 - 1)] + sorted[size_t(M / 2)]) / 2.0;
  CHECK(s["median"].get<double>() == median);
  double h = 0;
  for (int64_t v : sizes)
    if (v > 0) h -= double(v) / double(n) * std::log(double(v) / double(n));
  CHECK(s["size_entropy_nats"].get<double>() == doctest::Approx(h).epsilon(1e-12));
  CHECK(s["size_entropy_normalised"].get<double>() == doctest::Approx(h / std::log(double(M))).epsilon(1e-12));
  const auto [pur, score] = brute_purity_nmi(a, labels, M, L);
  CHECK(s["purity"].get<double>() == doctest::Approx(pur).epsilon(1e-12));
  CHECK(s["nmi"].get<double>() == doctest::Approx(score).epsilon(1e-9));
}

// A groups TSV as tiny-imagenet-32/splits.tsv has it (wnid, name, split, family), for the four classes of
// write_four_class_folder: classes 0 and 2 in split "A", 1 and 3 in "B"; the family column puts 0 alone.
void write_groups_tsv(const std::string& path, bool with_class3 = true) {
  std::ofstream f(path);
  f << "wnid\tname\tsplit\tfamily\n";
  f << "class0\tdark\tA\tone\nclass1\tbright\tB\ttwo\nclass2\tred\tA\ttwo\n";
  if (with_class3) f << "class3\tblue\tB\ttwo\n";
  f << "class9\tunused\tC\tthree\n";  // a class the data set lacks is ignored
}

}  // namespace

TEST_SUITE("cluster cmd") {

TEST_CASE("moce cluster end to end: files, figures recomputed from them, the sample grid, bitwise reruns, bank reuse") {
  TempDir tmp("cluster_cmd");
  const int64_t per_class = 16, n = 64, M = 4;
  write_four_class_folder(tmp.file("images"), per_class);
  write_tiny_checkpoint(tmp.file("mae.safetensors"), 3);
  auto args = [&](const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"--checkpoint", tmp.file("mae.safetensors"), "--data", tmp.file("images"),
                                  "--clusters", std::to_string(M), "--epochs", "3", "--batch", "16", "--init", "kmeans++",
                                  "--lr", "0.01", "--workers", "1", "--out", out};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  {
    testutil::ThreadCount one(1);
    REQUIRE(run_cluster(args(tmp.file("a"))) == 0);
  }
  const std::string a = tmp.file("a");

  // The bank: n rows of unit length, paths of the folder's images in order.
  moce::cluster::FeatureBank bank = moce::cluster::read_bank(a + "/bank.safetensors");
  REQUIRE(bank.n == n);
  REQUIRE(bank.d == 16);
  REQUIRE(bank.paths.size() == size_t(n));
  CHECK(bank.paths[0].find("class0/100.png") != std::string::npos);
  CHECK(bank.paths[size_t(n - 1)].find("class3/115.png") != std::string::npos);
  for (int64_t r = 0; r < n; r++) {
    double s = 0;
    for (int64_t j = 0; j < bank.d; j++) s += double(bank.value(r, j)) * bank.value(r, j);
    CHECK(std::sqrt(s) == doctest::Approx(1.0).epsilon(1e-5));
  }
  moce::cluster::CentroidsFile cf = moce::cluster::read_centroids(a + "/centroids.safetensors");
  REQUIRE(cf.centroids.size(0) == M);
  REQUIRE(cf.centroids.size(1) == bank.d);
  CHECK(cf.config["init"] == "kmeans++");
  eng::SafetensorsFile asg = eng::load_safetensors(a + "/assignments.safetensors");
  std::vector<int32_t> balanced = asg.tensors["cluster"].to_vector<int32_t>();
  std::vector<int32_t> plain = asg.tensors["cluster_argmax"].to_vector<int32_t>();
  REQUIRE(balanced.size() == size_t(n));
  REQUIRE(plain.size() == size_t(n));

  // The plain argmax from the bank and the centroids in f64.
  std::vector<float> C = cf.centroids.to_vector<float>();
  for (int64_t r = 0; r < n; r++) {
    int32_t best = 0;
    double best_s = -1e300;
    for (int64_t j = 0; j < M; j++) {
      double s = 0;
      for (int64_t k = 0; k < bank.d; k++) s += double(bank.value(r, k)) * C[size_t(j * bank.d + k)];
      if (s > best_s) best_s = s, best = int32_t(j);
    }
    CHECK(plain[size_t(r)] == best);
  }

  // clusters.json against a recomputation from assignments.safetensors and the folder's labels (class = row / 16).
  json j = read_json(a + "/clusters.json");
  std::vector<int64_t> labels;
  for (int64_t r = 0; r < n; r++) labels.push_back(r / per_class);
  CHECK(j["images"] == n);
  CHECK(j["clusters"] == M);
  CHECK(j["format"] == "moce-cluster-run");
  CHECK(j["epochs"].size() == 3);
  CHECK(j["final_sinkhorn"]["converged"] == true);
  check_summary(j["balanced"], balanced, labels, M, 4);
  check_summary(j["plain_argmax"], plain, labels, M, 4);
  MESSAGE("four planted colours, random tiny MAE: balanced sizes " << j["balanced"]["sizes"].dump() << ", purity "
          << j["balanced"]["purity"] << ", NMI " << j["balanced"]["nmi"]);
  CHECK(j["balanced"]["purity"].get<double>() > 0.5);  // the classes differ in colour: a random encoder separates some

  // The grid: 4 rows (M < 8) of 16 tiles of 64 pixels (16 x 4) under 16-pixel title strips; the first tile of row 0 is
  // the first member of cluster 0 upscaled 4x; the title strip holds black text.
  data::Image png = data::decode_image(a + "/cluster_samples.png");
  CHECK(png.width == 2 + 16 * (64 + 2));
  CHECK(png.height == 2 + M * (16 + 64 + 2));
  int64_t first = -1;
  for (int64_t r = 0; r < n && first < 0; r++)
    if (balanced[size_t(r)] == 0) first = r;
  REQUIRE(first >= 0);
  data::Image src = data::decode_image(bank.paths[size_t(first)]);
  for (int64_t y = 0; y < 16; y++)
    for (int64_t x = 0; x < 16; x++)
      for (int64_t c = 0; c < 3; c++) {
        const uint8_t want = src.pixels[size_t((y * 16 + x) * 3 + c)];
        CHECK(png.pixels[size_t(((2 + 16 + y * 4 + 3) * png.width + 2 + x * 4 + 1) * 3 + c)] == want);
      }
  int64_t dark = 0;
  for (int64_t y = 2; y < 18; y++)
    for (int64_t x = 0; x < png.width; x++) dark += png.pixels[size_t((y * png.width + x) * 3)] == 0;
  CHECK(dark > 50);

  // Run again with 2 threads into another folder: every file identical (clusters.json but for timings and paths).
  {
    testutil::ThreadCount two(2);
    REQUIRE(run_cluster(args(tmp.file("b"))) == 0);
  }
  for (const char* f : {"bank.safetensors", "bank.safetensors.paths", "centroids.safetensors", "assignments.safetensors",
                        "cluster_samples.png"})
    CHECK_MESSAGE(read_bytes(a + "/" + f) == read_bytes(tmp.file("b") + "/" + f), f);
  auto without_timing = [](json x) {
    for (auto& e : x["epochs"]) e.erase("seconds");
    x.erase("inputs");
    return x;
  };
  json jb = read_json(tmp.file("b/clusters.json"));
  CHECK(without_timing(jb) == without_timing(j));
  CHECK(jb["inputs"]["data"] == tmp.file("images"));

  // --bank reuses a bank: into a new folder, and into its own run folder (the same config), with the same results.
  REQUIRE(run_cluster(args(tmp.file("c"), {"--bank", a + "/bank.safetensors"})) == 0);
  CHECK(read_bytes(tmp.file("c/assignments.safetensors")) == read_bytes(a + "/assignments.safetensors"));
  CHECK(read_bytes(tmp.file("c/bank.safetensors")) == read_bytes(a + "/bank.safetensors"));
  REQUIRE(run_cluster(args(a, {"--bank", a + "/bank.safetensors"})) == 0);
  CHECK(read_bytes(a + "/assignments.safetensors") == read_bytes(tmp.file("b/assignments.safetensors")));
  // Without --data a bank still clusters (no labels, no picture).
  REQUIRE(run_cluster({"--bank", a + "/bank.safetensors", "--clusters", "4", "--epochs", "3", "--batch", "16", "--init",
                       "kmeans++", "--lr", "0.01", "--out", tmp.file("d")}) == 0);
  json jd = read_json(tmp.file("d/clusters.json"));
  CHECK(!jd["balanced"].contains("purity"));
  CHECK(!fs::exists(tmp.file("d/cluster_samples.png")));
  CHECK(jd["balanced"]["sizes"] == j["balanced"]["sizes"]);
  // --centroids assigns with given centroids: its own centroids give its own assignment back.
  REQUIRE(run_cluster({"--bank", a + "/bank.safetensors", "--centroids", a + "/centroids.safetensors", "--out",
                       tmp.file("e")}) == 0);
  CHECK(read_bytes(tmp.file("e/assignments.safetensors")) == read_bytes(a + "/assignments.safetensors"));
}

TEST_CASE("moce cluster: bad input gives one line naming the file or flag, and an existing run folder stays as it was") {
  TempDir tmp("cluster_cmd_bad");
  write_four_class_folder(tmp.file("images"), 4);
  write_tiny_checkpoint(tmp.file("mae.safetensors"), 3);
  const std::string ck = tmp.file("mae.safetensors"), imgs = tmp.file("images"), a = tmp.file("a");
  auto base = [&](std::vector<std::string> extra) {
    std::vector<std::string> v = {"--checkpoint", ck, "--data", imgs, "--clusters", "3", "--epochs", "2", "--batch", "8",
                                  "--workers", "1", "--out", a};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  };
  REQUIRE(run_cluster(base({})) == 0);
  const auto before = snapshot(a);
  REQUIRE(before.size() == 6);
  auto expect = [&](const std::vector<std::string>& args, const std::vector<std::string>& parts) {
    const std::string err = error_of([&] { run_cluster(args); });
    CHECK_MESSAGE(err.find('\n') == std::string::npos, err);
    for (const std::string& p : parts) CHECK_MESSAGE(err.find(p) != std::string::npos, "want '" << p << "' in: " << err);
    CHECK_MESSAGE(snapshot(a) == before, "the run folder changed after: " << err);
  };

  // Bad flag values, named.
  expect(base({"--clusters", "1"}), {"--clusters must be at least 2"});
  expect(base({"--eps", "0"}), {"--eps must be positive"});
  expect(base({"--tau", "-1"}), {"--tau must be positive"});
  expect(base({"--epochs", "0"}), {"--epochs must be at least 1"});
  expect(base({"--pool", "max"}), {"--pool must be mean or cls", "max"});
  expect(base({"--init", "farthest"}), {"--init must be random or kmeans++", "farthest"});
  expect(base({"--bank-dtype", "f16"}), {"--bank-dtype must be f32 or bf16", "f16"});
  expect(base({"--sinkhorn-iters", "0"}), {"--sinkhorn-iters"});
  if (!eng::cuda_available()) expect(base({"--force", "--device", "cuda"}), {"--device cuda"});
  // The folder holds this run: only --bank may reuse it; another config is refused.
  expect(base({}), {"--out " + a, "already holds this cluster run", "--bank"});
  expect(base({"--seed", "5"}), {"--out " + a, "another config", "--force"});
  // A folder holding another kind of run is refused unless --force.
  fs::create_directories(tmp.file("other"));
  { std::ofstream(tmp.file("other/metrics.jsonl")) << "{}\n"; }
  {
    const std::string err = error_of([&] {
      std::vector<std::string> v = base({});
      v[size_t(std::find(v.begin(), v.end(), "--out") - v.begin()) + 1] = tmp.file("other");
      run_cluster(v);
    });
    CHECK_MESSAGE(err.find("--out " + tmp.file("other") + ": holds another run (metrics.jsonl)") != std::string::npos, err);
    CHECK(read_bytes(tmp.file("other/metrics.jsonl")) == "{}\n");
  }
  // Bad inputs behind --force: found before anything is written.
  eng::save_safetensors(tmp.file("notmae.safetensors"), {{"weight", Tensor::zeros({2, 2})}});
  expect(base({"--force", "--checkpoint", tmp.file("notmae.safetensors")}), {"notmae.safetensors", "not an MAE checkpoint"});
  expect(base({"--force", "--clusters", "17"}), {"--clusters 17 is larger than the number of images", "(16)"});
  write_tiny_checkpoint(tmp.file("nan.safetensors"), 3, /*nan_weights=*/true);
  // A NaN weight is named when the model loads (tests/test_integrity.cpp), before any image is read.
  expect(base({"--force", "--checkpoint", tmp.file("nan.safetensors")}),
         {"nan.safetensors: weight 'norm.bias' holds a non-finite value (NaN)"});
  fs::create_directories(tmp.file("empty"));
  expect(base({"--force", "--data", tmp.file("empty")}), {tmp.file("empty")});
  // A bank of another dimension than the centroids.
  moce::cluster::ClusterConfig cfg;
  cfg.clusters = 3;
  moce::cluster::write_centroids(tmp.file("wide.safetensors"), moce::cluster::init_random_unit(3, 17, 1), cfg, "x");
  expect(base({"--force", "--bank", a + "/bank.safetensors", "--centroids", tmp.file("wide.safetensors")}),
         {"--centroids " + tmp.file("wide.safetensors"), "dimension 17", "dimension 16"});
  // A bank from another checkpoint than --checkpoint.
  write_tiny_checkpoint(tmp.file("mae2.safetensors"), 4);
  expect(base({"--force", "--bank", a + "/bank.safetensors", "--checkpoint", tmp.file("mae2.safetensors")}),
         {"--bank " + a + "/bank.safetensors", "mae2.safetensors"});
  expect(base({"--force", "--bank", tmp.file("nothere.safetensors")}), {"nothere.safetensors"});
  // --force writes over the other run.
  {
    std::vector<std::string> v = base({"--force"});
    v[size_t(std::find(v.begin(), v.end(), "--out") - v.begin()) + 1] = tmp.file("other");
    REQUIRE(run_cluster(v) == 0);
    CHECK(fs::exists(tmp.file("other/clusters.json")));
  }
}

TEST_CASE("moce cluster --algorithm kmeans and --groups: Lloyd's files, and purity / NMI against the groups recomputed") {
  TempDir tmp("cluster_cmd_kmeans");
  const int64_t per_class = 16, n = 64, M = 4;
  write_four_class_folder(tmp.file("images"), per_class);
  write_tiny_checkpoint(tmp.file("mae.safetensors"), 3);
  write_groups_tsv(tmp.file("groups.tsv"));
  {
    testutil::ThreadCount one(1);
    REQUIRE(run_cluster({"--checkpoint", tmp.file("mae.safetensors"), "--data", tmp.file("images"), "--clusters",
                         std::to_string(M), "--algorithm", "kmeans", "--kmeans-iters", "30", "--init", "kmeans++",
                         "--groups", tmp.file("groups.tsv"), "--workers", "1", "--out", tmp.file("k")}) == 0);
  }
  const std::string k = tmp.file("k");
  json j = read_json(k + "/clusters.json");
  CHECK(j["algorithm"] == "kmeans");
  CHECK(!j.contains("final_sinkhorn"));
  REQUIRE(j["kmeans"]["iterations"].size() >= 1);
  CHECK(j["kmeans"]["iterations"][0]["changed"] == n);
  CHECK(j["kmeans"]["max_iterations"] == 30);
  eng::SafetensorsFile asg = eng::load_safetensors(k + "/assignments.safetensors");
  std::vector<int32_t> cl = asg.tensors["cluster"].to_vector<int32_t>();
  CHECK(cl == asg.tensors["cluster_argmax"].to_vector<int32_t>());
  moce::cluster::FeatureBank bank = moce::cluster::read_bank(k + "/bank.safetensors");
  moce::cluster::CentroidsFile cf = moce::cluster::read_centroids(k + "/centroids.safetensors");
  std::vector<float> C = cf.centroids.to_vector<float>();
  // Converged Lloyd: every row is nearest (Euclidean, f64) to its own cluster's mean, and the centroids file holds
  // those means' directions.
  REQUIRE(j["kmeans"]["converged"] == true);
  std::vector<std::vector<double>> mean(size_t(M), std::vector<double>(size_t(bank.d), 0.0));
  std::vector<int64_t> size(size_t(M), 0);
  for (int64_t r = 0; r < n; r++) {
    size[size_t(cl[size_t(r)])]++;
    for (int64_t q = 0; q < bank.d; q++) mean[size_t(cl[size_t(r)])][size_t(q)] += bank.value(r, q);
  }
  for (int64_t c = 0; c < M; c++) {
    REQUIRE(size[size_t(c)] > 0);
    double norm = 0;
    for (double& v : mean[size_t(c)]) v /= double(size[size_t(c)]), norm += v * v;
    CHECK(j["kmeans"]["mean_norms"][size_t(c)].get<double>() == doctest::Approx(std::sqrt(norm)).epsilon(1e-5));
    for (int64_t q = 0; q < bank.d; q++)
      CHECK(C[size_t(c * bank.d + q)] == doctest::Approx(mean[size_t(c)][size_t(q)] / std::sqrt(norm)).epsilon(1e-4));
  }
  for (int64_t r = 0; r < n; r++) {
    int32_t best = 0;
    double best_d = 1e300;
    for (int64_t c = 0; c < M; c++) {
      double dd = 0;
      for (int64_t q = 0; q < bank.d; q++) dd += std::pow(double(bank.value(r, q)) - mean[size_t(c)][size_t(q)], 2);
      if (dd < best_d) best_d = dd, best = int32_t(c);
    }
    CHECK(cl[size_t(r)] == best);
  }
  // Labels (class = row / 16) and groups (split: classes 0, 2 -> A = 0; 1, 3 -> B = 1) recomputed.
  std::vector<int64_t> labels, groups;
  for (int64_t r = 0; r < n; r++) labels.push_back(r / per_class), groups.push_back((r / per_class) % 2);
  check_summary(j["balanced"], cl, labels, M, 4);
  CHECK(j["groups"]["column"] == "split");
  CHECK(j["groups"]["names"] == json({"A", "B"}));
  CHECK(j["groups"]["images_per_group"] == json({32, 32}));
  for (const char* which : {"balanced", "plain_argmax"}) {
    const auto [pur, score] = brute_purity_nmi(cl, groups, M, 2);
    CHECK(j[which]["groups"]["purity"].get<double>() == doctest::Approx(pur).epsilon(1e-12));
    CHECK(j[which]["groups"]["nmi"].get<double>() == doctest::Approx(score).epsilon(1e-9));
  }
  MESSAGE("k-means on the four colours: sizes " << j["balanced"]["sizes"].dump() << ", NMI " << j["balanced"]["nmi"]
          << ", against the groups NMI " << j["balanced"]["groups"]["nmi"] << ", " << j["kmeans"]["iterations"].size()
          << " iterations");

  // Bitwise the same with 2 threads (but for timings and paths).
  {
    testutil::ThreadCount two(2);
    REQUIRE(run_cluster({"--bank", k + "/bank.safetensors", "--data", tmp.file("images"), "--clusters", std::to_string(M),
                         "--algorithm", "kmeans", "--kmeans-iters", "30", "--init", "kmeans++", "--groups",
                         tmp.file("groups.tsv"), "--out", tmp.file("k2")}) == 0);
  }
  for (const char* f : {"centroids.safetensors", "assignments.safetensors", "cluster_samples.png"})
    CHECK_MESSAGE(read_bytes(k + "/" + f) == read_bytes(tmp.file("k2") + "/" + f), f);

  // Sinkhorn with --groups --groups-column family on the same bank: both assignments scored against the family.
  REQUIRE(run_cluster({"--bank", k + "/bank.safetensors", "--data", tmp.file("images"), "--clusters", std::to_string(M),
                       "--epochs", "3", "--batch", "16", "--init", "kmeans++", "--lr", "0.01", "--groups",
                       tmp.file("groups.tsv"), "--groups-column", "family", "--out", tmp.file("s")}) == 0);
  json js = read_json(tmp.file("s/clusters.json"));
  CHECK(js["algorithm"] == "sinkhorn");
  CHECK(js["groups"]["names"] == json({"one", "two"}));
  eng::SafetensorsFile sa = eng::load_safetensors(tmp.file("s/assignments.safetensors"));
  std::vector<int64_t> family;
  for (int64_t r = 0; r < n; r++) family.push_back(r / per_class == 0 ? 0 : 1);
  for (auto [which, tensor] : {std::pair{"balanced", "cluster"}, std::pair{"plain_argmax", "cluster_argmax"}}) {
    const auto [pur, score] = brute_purity_nmi(sa.tensors[tensor].to_vector<int32_t>(), family, M, 2);
    CHECK(js[which]["groups"]["purity"].get<double>() == doctest::Approx(pur).epsilon(1e-12));
    CHECK(js[which]["groups"]["nmi"].get<double>() == doctest::Approx(score).epsilon(1e-9));
  }
  // A kmeans run is another config than the Sinkhorn run of the same folder.
  const std::string err = error_of([&] {
    run_cluster({"--bank", k + "/bank.safetensors", "--clusters", std::to_string(M), "--epochs", "3", "--batch", "16",
                 "--init", "kmeans++", "--lr", "0.01", "--algorithm", "kmeans", "--out", tmp.file("s")});
  });
  CHECK_MESSAGE(err.find("another config") != std::string::npos, err);
}

TEST_CASE("moce cluster: bad --algorithm, --kmeans-iters and --groups give one line naming the flag or file") {
  TempDir tmp("cluster_cmd_groups_bad");
  write_four_class_folder(tmp.file("images"), 4);
  write_tiny_checkpoint(tmp.file("mae.safetensors"), 3);
  write_groups_tsv(tmp.file("groups.tsv"));
  write_groups_tsv(tmp.file("short.tsv"), /*with_class3=*/false);
  { std::ofstream(tmp.file("empty.tsv")); }
  { std::ofstream(tmp.file("ragged.tsv")) << "wnid\tname\tsplit\nclass0\tdark\n"; }
  auto base = [&](std::vector<std::string> extra) {
    std::vector<std::string> v = {"--checkpoint", tmp.file("mae.safetensors"), "--data", tmp.file("images"), "--clusters",
                                  "3", "--workers", "1", "--out", tmp.file("a")};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  };
  auto expect = [&](const std::vector<std::string>& args, const std::vector<std::string>& parts) {
    const std::string err = error_of([&] { run_cluster(args); });
    CHECK_MESSAGE(err.find('\n') == std::string::npos, err);
    for (const std::string& p : parts) CHECK_MESSAGE(err.find(p) != std::string::npos, "want '" << p << "' in: " << err);
    CHECK_MESSAGE(!fs::exists(tmp.file("a")), "the run folder was written after: " << err);
  };
  expect(base({"--algorithm", "spectral"}), {"--algorithm must be sinkhorn or kmeans", "spectral"});
  expect(base({"--algorithm", "kmeans", "--kmeans-iters", "0"}), {"--kmeans-iters must be at least 1"});
  expect(base({"--groups", tmp.file("missing.tsv")}), {"--groups " + tmp.file("missing.tsv"), "cannot be read"});
  expect(base({"--groups", tmp.file("groups.tsv"), "--groups-column", "colour"}),
         {"--groups " + tmp.file("groups.tsv"), "no column 'colour'", "wnid, name, split, family"});
  expect(base({"--groups", tmp.file("short.tsv")}), {"--groups " + tmp.file("short.tsv"), "class 'class3'"});
  expect(base({"--groups", tmp.file("empty.tsv")}), {"--groups " + tmp.file("empty.tsv"), "is empty"});
  expect(base({"--groups", tmp.file("ragged.tsv")}), {"--groups " + tmp.file("ragged.tsv"), "line 2"});
  expect(base({"--groups", tmp.file("groups.tsv"), "--groups-column", "wnid"}), {"first one"});
  expect({"--bank", tmp.file("x.safetensors"), "--groups", tmp.file("groups.tsv"), "--out", tmp.file("a")},
         {"--groups", "needs --data"});
  expect(base({"--algorithm", "kmeans", "--centroids", tmp.file("c.safetensors")}), {"--centroids", "--algorithm kmeans"});
}

TEST_CASE("moce cluster on Fashion-MNIST (--limit 600, the fixture MAE)") {
  if (data::fashion_mnist_dir().empty()) {
    MESSAGE("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  TempDir tmp("cluster_fmnist");
  REQUIRE(run_cluster({"--checkpoint", "tests/fixtures/mae_test_tiny.safetensors", "--config", "mae_test_tiny", "--data",
                       "fashion-mnist", "--limit", "600", "--clusters", "10", "--epochs", "3", "--batch", "128", "--init",
                       "kmeans++", "--lr", "0.01", "--workers", "1", "--out", tmp.file("f")}) == 0);
  json j = read_json(tmp.file("f/clusters.json"));
  CHECK(j["images"] == 600);
  int64_t total = 0;
  for (int64_t s : j["balanced"]["sizes"].get<std::vector<int64_t>>()) total += s;
  CHECK(total == 600);
  data::Image png = data::decode_image(tmp.file("f/cluster_samples.png"));
  CHECK(png.height == 2 + 8 * (16 + 64 + 2));
  // Gray data stays gray: every pixel's channels equal.
  int64_t colour = 0;
  for (size_t p = 0; p < png.pixels.size(); p += 3) colour += png.pixels[p] != png.pixels[p + 1] || png.pixels[p] != png.pixels[p + 2];
  CHECK(colour == 0);
  MESSAGE("Fashion-MNIST 600 images, M 10: purity " << j["balanced"]["purity"] << ", NMI " << j["balanced"]["nmi"]);
}

}  // TEST_SUITE
