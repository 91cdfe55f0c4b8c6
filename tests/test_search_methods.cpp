// test_search_methods.cpp: the paper's comparison search methods (moce/search/logme.h, candidates.h, methods.h), suite
// 'search methods'. Each against a reference of its own:
//   - LogME against thuml/LogME's fixed-point iteration on fixed inputs (tests/fixtures/logme_reference.json, written
//     by tests/fixtures/make_logme_fixture.py, a numpy transcription of LogME.py): the N > D path, the N <= D path and
//     a rank-deficient one with an absent class; the score and every class's alpha, beta, evidence within 1e-8
//     relative, the iteration counts exactly; the Jacobi eigen-decomposition against A = V diag(w) V^T in f64;
//     features that separate the classes score higher than the same features with shuffled labels;
//   - the candidates on the tiny MoCE fixture (tests/moce_fixture.h) against each centroid's gate argmax recomputed in
//     f64 from the file's tensors; their features (the first block shared) bit for bit those of each path's dense ViT;
//   - a planted model whose gates send each cluster to its own expert, one expert leaving the features alone and the
//     others swamping them with a constant: k-NN and LogME both choose the one that keeps the classes apart;
//   - `moce search --method all`: search.json's entries recomputed from the candidates' ViTs (LogME, k-NN on the split);
//   - the stratified split; bad input (one class, a dense model, empty data, too few images, bad flags) one line each.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>

#include "data/dataset.h"
#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/cmd/commands.h"
#include "moce/common/dataset.h"
#include "moce/eval/features.h"
#include "moce/finetune/finetune.h"
#include "moce/search/candidates.h"
#include "moce/search/logme.h"
#include "moce/search/methods.h"
#include "moce/train/expert_training.h"
#include "tests/moce_fixture.h"

using eng::Tensor;
using json = nlohmann::json;

namespace {

using testutil::error_of;
using testutil::moce_fixture;
using testutil::read_text;
using testutil::run;
using testutil::TempDir;

double rel(double got, double want) { return std::abs(got - want) / std::max(std::abs(want), 1e-300); }

// One MoCE run with its only expert layer in block 1 (mae_test_tiny has 2 blocks), so block 0 is shared by every
// candidate; trained once for the suite.
struct MethodsRun {
  TempDir dir{"search_methods_run"};
  std::string model = dir.file("moce") + "/weights.safetensors";
  MethodsRun() { REQUIRE(moce_fixture().train("moce", dir.file("moce"), {"--moe-blocks", "1"}) == 0); }
};
MethodsRun& methods_run() {
  static MethodsRun r;
  return r;
}

// Each cluster's expert at every MoE layer, in f64 from the model file: argmax_e of W_g[e] . C_c (the softmax keeps
// the order), the first on a tie.
std::vector<std::vector<int64_t>> gate_paths_f64(const std::string& file, const std::vector<int64_t>& blocks) {
  eng::SafetensorsFile w = eng::load_safetensors(file);
  const Tensor centroids = w.tensors.at(moce::kCentroidsTensor);
  const int64_t M = centroids.size(0), d = centroids.size(1);
  const std::vector<double> cv = centroids.to_vector<double>();
  std::vector<std::vector<int64_t>> paths(static_cast<size_t>(M));
  for (int64_t b : blocks) {
    const Tensor gate = w.tensors.at("blocks." + std::to_string(b) + ".mlp.gate.weight");
    const std::vector<double> g = gate.to_vector<double>();
    for (int64_t c = 0; c < M; c++) {
      int64_t best = 0;
      double top = -1e300;
      for (int64_t e = 0; e < gate.size(0); e++) {
        double dot = 0;
        for (int64_t k = 0; k < d; k++) dot += g[size_t(e * d + k)] * cv[size_t(c * d + k)];
        if (dot > top) top = dot, best = e;
      }
      paths[size_t(c)].push_back(best);
    }
  }
  return paths;
}

// The features of one path's dense ViT over ds (norm_avg), through the same pipeline and batch size.
moce::FeatureSet vit_feature_set(const moce::TrainedModel& m, const std::vector<int64_t>& experts,
                                 std::shared_ptr<const data::Dataset> ds, int64_t batch) {
  model::VisionTransformer vit = moce::search::dense_vit_of(m, experts, model::VitPool::NormAvg);
  moce::FeatureFn fn = [&vit](const Tensor& images) { return vit.features(images); };
  return moce::extract_features(fn, ds, data::eval_pipeline(vit.config().img_size), {batch, 1});
}
Tensor vit_features(const moce::TrainedModel& m, const std::vector<int64_t>& experts,
                    std::shared_ptr<const data::Dataset> ds, int64_t batch) {
  return vit_feature_set(m, experts, ds, batch).features;
}

moce::search::MethodOptions quiet_options() {
  moce::search::MethodOptions o;
  o.progress_every = 0;
  return o;
}

moce::search::SearchOptions one_worker(int64_t batch = 128) {
  moce::search::SearchOptions o;
  o.workers = 1;
  o.batch = batch;
  return o;
}

}  // namespace

TEST_SUITE("search methods") {
  TEST_CASE("LogME equals thuml/LogME's fixed point on the fixture (1e-8 relative), f64 and f32 inputs") {
    const json doc = json::parse(read_text("tests/fixtures/logme_reference.json"));
    REQUIRE(doc["cases"].size() == 3);
    for (const auto& [name, c] : doc["cases"].items()) {
      CAPTURE(name);
      const int64_t n = c["n"], d = c["d"];
      const std::vector<double> f = c["features"].get<std::vector<double>>();
      const std::vector<int64_t> y = c["labels"].get<std::vector<int64_t>>();
      const Tensor labels = Tensor::from_vector(y, {n});
      for (eng::DType dtype : {eng::DType::F64, eng::DType::F32}) {
        CAPTURE(eng::dtype_name(dtype));
        const moce::search::LogmeResult r = moce::search::logme(Tensor::from_vector(f, {n, d}).to(dtype), labels);
        CHECK(rel(r.score, c["score"]) < 1e-8);
        CHECK(r.rank == c["rank"].get<int64_t>());
        REQUIRE(r.classes.size() == c["alpha"].size());
        for (size_t k = 0; k < r.classes.size(); k++) {
          CAPTURE(k);
          CHECK(rel(r.classes[k].alpha, c["alpha"][k]) < 1e-8);
          CHECK(rel(r.classes[k].beta, c["beta"][k]) < 1e-8);
          CHECK(rel(r.classes[k].evidence, c["evidence"][k]) < 1e-8);
          CHECK(r.classes[k].iterations == c["iterations"][k].get<int>());
        }
      }
    }
  }

  TEST_CASE("the Jacobi eigen-decomposition: A = V diag(w) V^T, V orthonormal, w descending (f64)") {
    for (int64_t n : {1, 2, 7, 24}) {
      CAPTURE(n);
      const std::vector<double> g = eng::Generator(uint64_t(n)).normal({n, n}, 0.0, 1.0).to_vector<double>();
      std::vector<double> a(size_t(n * n));
      for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) a[size_t(i * n + j)] = g[size_t(i * n + j)] + g[size_t(j * n + i)];
      if (n == 24)  // a repeated eigenvalue: the last 12 rows and columns a multiple of the identity
        for (int64_t i = 12; i < n; i++)
          for (int64_t j = 0; j < n; j++) a[size_t(i * n + j)] = a[size_t(j * n + i)] = i == j ? 3.0 : 0.0;
      const moce::search::SymmetricEigen e = moce::search::symmetric_eigen(a, n);
      double scale = 0, worst = 0, ortho = 0;
      for (double v : a) scale = std::max(scale, std::abs(v));
      for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
          double back = 0, dot = 0;
          for (int64_t k = 0; k < n; k++) {
            back += e.vectors[size_t(i * n + k)] * e.values[size_t(k)] * e.vectors[size_t(j * n + k)];
            dot += e.vectors[size_t(k * n + i)] * e.vectors[size_t(k * n + j)];
          }
          worst = std::max(worst, std::abs(back - a[size_t(i * n + j)]));
          ortho = std::max(ortho, std::abs(dot - (i == j ? 1.0 : 0.0)));
        }
      CHECK(worst < 1e-12 * scale);
      CHECK(ortho < 1e-12);
      for (int64_t k = 1; k < n; k++) CHECK(e.values[size_t(k - 1)] >= e.values[size_t(k)]);
    }
  }

  TEST_CASE("LogME: features that separate the classes score higher than the same features with shuffled labels") {
    const int64_t n = 90, d = 6, classes = 3;
    eng::Generator g(3);
    std::vector<double> f = g.normal({n, d}, 0.0, 1.0).to_vector<double>();
    std::vector<int64_t> y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; i++) {
      y[size_t(i)] = i % classes;
      f[size_t(i * d + y[size_t(i)])] += 4.0;  // class c lifts feature c
    }
    const Tensor features = Tensor::from_vector(f, {n, d});
    std::vector<int64_t> shuffled(static_cast<size_t>(n));
    const std::vector<int64_t> perm = g.permutation(n).to_vector<int64_t>();
    for (int64_t i = 0; i < n; i++) shuffled[size_t(i)] = y[size_t(perm[size_t(i)])];
    const double fit = moce::search::logme(features, Tensor::from_vector(y, {n})).score;
    const double shuffled_fit = moce::search::logme(features, Tensor::from_vector(shuffled, {n})).score;
    CHECK(fit > shuffled_fit + 0.1);
    // Bad input: one line naming what is wrong.
    CHECK(error_of([&] { moce::search::logme(Tensor::zeros({0, d}, eng::DType::F64), Tensor::zeros({0}, eng::DType::I64)); })
              .find("is empty") != std::string::npos);
    CHECK(error_of([&] { moce::search::logme(features, Tensor::from_vector(y, {n}).slice(0, 0, 5)); }).find("labels must be [90]") !=
          std::string::npos);
    std::vector<double> bad = f;
    bad[7] = std::nan("");
    CHECK(error_of([&] { moce::search::logme(Tensor::from_vector(bad, {n, d}), Tensor::from_vector(y, {n})); })
              .find("feature 1 of row 1 is not finite") != std::string::npos);
  }

  TEST_CASE("the stratified split: per class round(20%) held out, disjoint, complete, fixed by the seed") {
    std::vector<int64_t> labels;
    for (int64_t c = 0; c < 3; c++)
      for (int64_t i = 0; i < 10 * (c + 1) + 1; i++) labels.push_back(c);  // 11, 21, 31 rows
    labels.push_back(3);                                                      // a class of one: train only
    std::rotate(labels.begin(), labels.begin() + 17, labels.end());
    const moce::search::Split s = moce::search::stratified_split(labels, 0.2, 7);
    std::vector<int64_t> val_of(4, 0);
    for (int64_t i : s.val) val_of[size_t(labels[size_t(i)])]++;
    CHECK(val_of == std::vector<int64_t>{2, 4, 6, 0});
    std::vector<int64_t> all = s.train;
    all.insert(all.end(), s.val.begin(), s.val.end());
    std::sort(all.begin(), all.end());
    std::vector<int64_t> want(labels.size());
    std::iota(want.begin(), want.end(), int64_t(0));
    CHECK(all == want);
    CHECK(std::is_sorted(s.val.begin(), s.val.end()));
    CHECK(moce::search::stratified_split(labels, 0.2, 7).val == s.val);
    CHECK(moce::search::stratified_split(labels, 0.2, 8).val != s.val);
    CHECK(error_of([&] { moce::search::stratified_split(labels, 1.0, 7); }).find("--val-fraction") != std::string::npos);
  }

  TEST_CASE("candidates of the tiny MoCE model: the distinct gate paths (f64), and their features with block 0 shared") {
    MethodsRun& r = methods_run();
    const moce::TrainedModel m = moce::load_trained_model(r.model);
    REQUIRE(m.blocks == std::vector<int64_t>{1});
    const std::vector<moce::search::Candidate> cands = moce::search::candidate_paths(m);
    const std::vector<std::vector<int64_t>> paths = gate_paths_f64(r.model, m.blocks);
    // Every cluster in exactly one candidate, whose path is that cluster's; distinct paths; ordered by lowest cluster.
    std::vector<int> seen(paths.size(), 0);
    std::set<std::vector<int64_t>> distinct;
    int64_t last_first = -1;
    for (const auto& c : cands) {
      REQUIRE(!c.clusters.empty());
      CHECK(c.clusters.front() > last_first);
      last_first = c.clusters.front();
      CHECK(distinct.insert(c.experts).second);
      for (int64_t k : c.clusters) {
        seen[size_t(k)]++;
        CHECK(paths[size_t(k)] == c.experts);
      }
    }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
    CHECK(distinct == std::set<std::vector<int64_t>>(paths.begin(), paths.end()));

    // The features: bit for bit each path's dense ViT (which the export test ties to the model); block 0 run once.
    auto ds = moce::open_dataset(moce_fixture().data, true);
    const moce::search::CandidateFeatures cf = moce::search::candidate_features(m, cands, ds, {20, 1}, 1);
    CHECK(cf.shared_blocks == 1);
    REQUIRE(cf.features.size() == cands.size());
    CHECK(cf.labels.numel() == 72);
    CHECK(cf.cost.wall_seconds > 0);
    for (size_t i = 0; i < cands.size(); i++) {
      const Tensor want_f = vit_features(m, cands[i].experts, ds, 20);
      CHECK(cf.features[i].shape() == want_f.shape());
      CHECK(cf.features[i].to_vector<float>() == want_f.to_vector<float>());
    }
  }

  TEST_CASE("planted: one expert keeps the classes apart, the others swamp them; k-NN and LogME both choose it") {
    MethodsRun& r = methods_run();
    moce::TrainedModel m = moce::load_trained_model(r.model);
    const int64_t M = m.centroids.size(0), dc = m.centroids.size(1);
    REQUIRE(M == 3);
    moce::experts::MoeMlp& layer = *m.layers[0];
    const int64_t E = layer.gate_weight.size(0);
    // The gates: cluster c -> expert chosen[c] (row chosen[c] of W_g is 20 C_c, the other rows 0: with unit centroids
    // C_c . C_c = 1 beats C_c . C_j < 1 and 0).
    const std::vector<int64_t> chosen = {5, 2, 7};
    const std::vector<float> cv = m.centroids.to_vector<float>();
    std::vector<float> gate(size_t(E * dc), 0.0f);
    for (int64_t c = 0; c < M; c++)
      for (int64_t k = 0; k < dc; k++) gate[size_t(chosen[size_t(c)] * dc + k)] = 20.0f * cv[size_t(c * dc + k)];
    // Expert 2 (cluster 1's, candidate 1): fc2 all zero, so the block passes its attention residual on. Experts 5 and 7:
    // fc2's weight zero and a bias of +-(1..3)e9 per dimension: the residual sum rounds to the bias in f32 (its ulp, 64
    // and more, dwarfs the tokens), and the final norm gives every image the same features.
    const int64_t D = layer.experts.fc2_bias.size(1), H = layer.experts.fc2_weight.size(2);
    std::vector<float> w2 = layer.experts.fc2_weight.to_vector<float>(), b2 = layer.experts.fc2_bias.to_vector<float>();
    for (int64_t e : chosen) {
      std::fill(w2.begin() + e * D * H, w2.begin() + (e + 1) * D * H, 0.0f);
      for (int64_t k = 0; k < D; k++) b2[size_t(e * D + k)] = e == 2 ? 0.0f : float((k % 2 ? 1 : -1) * (1 + k % 3)) * 1e9f;
    }
    {
      eng::NoGradGuard ng;
      layer.gate_weight.copy_(Tensor::from_vector(gate, {E, dc}));
      layer.experts.fc2_weight.copy_(Tensor::from_vector(w2, layer.experts.fc2_weight.shape()));
      layer.experts.fc2_bias.copy_(Tensor::from_vector(b2, {E, D}));
    }
    auto ds = moce::open_dataset(moce_fixture().data, true);
    // The plant holds: a swamped candidate's features are one row repeated; the kept one's are not.
    for (int64_t e : {int64_t(5), int64_t(2)}) {
      const std::vector<float> f = vit_features(m, {e}, ds, 128).to_vector<float>();
      bool constant = true;
      for (size_t i = 0; i < f.size(); i++) constant = constant && f[i] == f[i % size_t(D)];
      CHECK(constant == (e != 2));
    }
    const moce::search::MethodsReport rep =
        moce::search::run_search_methods(m, ds, "planted", {"knn", "logme"}, one_worker(), quiet_options());
    REQUIRE(rep.candidates.size() == 3);
    for (int64_t c = 0; c < M; c++) {
      CHECK(rep.candidates[size_t(c)].experts == std::vector<int64_t>{chosen[size_t(c)]});
      CHECK(rep.candidates[size_t(c)].clusters == std::vector<int64_t>{c});
    }
    CHECK(rep.images == 72);
    CHECK(rep.knn_val == 15);  // 5 of each class of 24
    CHECK(rep.knn_train == 57);
    REQUIRE(rep.methods.size() == 2);
    const moce::search::MethodResult& knn = rep.methods[0];
    const moce::search::MethodResult& lm = rep.methods[1];
    CHECK(knn.method == "knn");
    CHECK(knn.choice == 1);
    CHECK(knn.scores[1] >= 0.9);
    // Identical features tie every neighbour: the 20 lowest-numbered training rows vote, class 0's, so a third is right.
    CHECK(knn.scores[0] == doctest::Approx(1.0 / 3.0));
    CHECK(knn.scores[2] == doctest::Approx(1.0 / 3.0));
    CHECK(lm.method == "logme");
    CHECK(lm.choice == 1);
    CHECK(lm.scores[1] > lm.scores[0] + 0.1);
    CHECK(lm.scores[1] > lm.scores[2] + 0.1);
    for (const auto& mr : rep.methods) {
      CHECK(mr.shared.wall_seconds == rep.features.wall_seconds);
      CHECK(mr.total().cpu_seconds >= mr.shared.cpu_seconds);
      CHECK(mr.own.wall_seconds > 0);
    }
    CHECK(rep.features.cpu_seconds > 0);
  }

  TEST_CASE("early-stop and exhaustive: each candidate's score is its own fine-tuning run; the best, the worst, the JSON") {
    MethodsRun& r = methods_run();
    moce::TrainedModel m = moce::load_trained_model(r.model);
    auto ds = moce::open_dataset(moce_fixture().data, true);
    moce::search::MethodOptions o = quiet_options();
    o.early_steps = 4;
    o.full_steps = 8;
    o.finetune_batch = 16;
    o.finetune_lr = 0.05;
    o.finetune_log_every = 0;
    const moce::search::MethodsReport rep =
        moce::search::run_search_methods(m, ds, "fixture", {"early-stop", "exhaustive"}, one_worker(), o);
    REQUIRE(rep.methods.size() == 2);
    REQUIRE(!rep.candidates.empty());
    CHECK(rep.knn_val == 15);
    CHECK(rep.knn_train == 57);
    // Each score again from the definition: the candidate's dense ViT fine-tuned on the split's training part and
    // scored on its held-out part, with the same lr, seed, steps and batch.
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < ds->size(); i++) labels.push_back(ds->label(i));
    const moce::search::Split split = moce::search::stratified_split(labels, o.val_fraction, o.split_seed);
    auto train = std::make_shared<data::SubsetDataset>(ds, split.train);
    auto val = std::make_shared<data::SubsetDataset>(ds, split.val);
    for (size_t k = 0; k < 2; k++) {
      const moce::search::MethodResult& mr = rep.methods[k];
      CHECK(mr.method == (k == 0 ? "early-stop" : "exhaustive"));
      CHECK(mr.score_name == "finetune_val_top1");
      REQUIRE(mr.scores.size() == rep.candidates.size());
      for (size_t i = 0; i < rep.candidates.size(); i++) {
        moce::finetune::RunOptions ro;
        ro.lr = o.finetune_lr;
        ro.steps = k == 0 ? o.early_steps : o.full_steps;
        ro.batch = o.finetune_batch;
        ro.workers = 1;
        ro.log_every = 0;
        const model::VisionTransformer vit = moce::search::dense_vit_of(m, rep.candidates[i].experts, model::VitPool::NormAvg);
        CHECK(mr.scores[i] == moce::finetune::finetune_once(vit, train, val, rep.classes, ro).top1);
      }
      CHECK(mr.scores[size_t(mr.choice)] == *std::max_element(mr.scores.begin(), mr.scores.end()));
      CHECK(mr.own.cpu_seconds > 0);
    }
    const json j = moce::search::methods_to_json(rep, r.model);
    const json& ex = j["methods"]["exhaustive"];
    const std::vector<double> sc = rep.methods[1].scores;
    CHECK(ex["worst"].get<int64_t>() == int64_t(std::min_element(sc.begin(), sc.end()) - sc.begin()));
    CHECK(ex["finetune"]["steps"] == 8);
    CHECK(j["methods"]["early-stop"]["finetune"]["steps"] == 4);
    CHECK(j["methods"]["early-stop"]["split"]["val"] == 15);
    const std::string summary = moce::search::methods_summary(rep);
    CHECK(summary.find("the worst: candidate") != std::string::npos);
    // The budgets are checked before any work.
    o.full_steps = 0;
    CHECK(error_of([&] { moce::search::run_search_methods(m, ds, "fixture", {"exhaustive"}, one_worker(), o); })
              .find("--full-steps (0)") != std::string::npos);
    CHECK(moce::search::parse_methods("every").size() == 5);
    CHECK(error_of([&] { moce::search::parse_methods("early"); }).find("early-stop, exhaustive") != std::string::npos);
  }

  TEST_CASE("moce search --method all: search.json holds each method, its scores recomputed from the candidates' ViTs") {
    MethodsRun& r = methods_run();
    testutil::MoceFixture& f = moce_fixture();
    TempDir out("search_methods_cli");
    REQUIRE(run(moce::cmd_search, "search", {"--model", r.model, "--data", f.data, "--method", "all", "--out", out.path.string(),
                                             "--workers", "1", "--batch", "20"}) == 0);
    const json s = json::parse(read_text(out.file("search.json")));
    CHECK(s["format"] == "moce-search");
    CHECK(s["images"] == 72);
    CHECK(s["classes"] == 3);
    CHECK(s["shared_blocks"] == 1);
    const moce::TrainedModel m = moce::load_trained_model(r.model);
    const std::vector<moce::search::Candidate> cands = moce::search::candidate_paths(m);
    REQUIRE(s["candidates"].size() == cands.size());
    for (size_t i = 0; i < cands.size(); i++) {
      CHECK(s["candidates"][i]["experts"] == json(cands[i].experts));
      CHECK(s["candidates"][i]["clusters"] == json(cands[i].clusters));
    }
    const json& methods = s["methods"];
    REQUIRE(methods.size() == 3);
    // MoCE's rule's entry is the top-level choice (the existing format), as a candidate.
    CHECK(methods["moce"]["experts"] == s["experts"]);
    CHECK(std::find(cands[methods["moce"]["choice"].get<size_t>()].clusters.begin(),
                    cands[methods["moce"]["choice"].get<size_t>()].clusters.end(),
                    s["cluster"].get<int64_t>()) != cands[methods["moce"]["choice"].get<size_t>()].clusters.end());
    // k-NN on the 80/20 split of seed 0 and LogME, recomputed from each path's dense ViT.
    auto ds = moce::open_dataset(f.data, true);
    const Tensor label_t = vit_feature_set(m, cands[0].experts, ds, 20).labels;
    const moce::search::Split split = moce::search::stratified_split(label_t.to_vector<int64_t>(), 0.2, 0);
    CHECK(methods["knn"]["split"] == json({{"train", 57}, {"val", 15}, {"k", 20}}));
    for (const std::string name : {"knn", "logme"}) {
      CAPTURE(name);
      const json& e = methods[name];
      REQUIRE(e["scores"].size() == cands.size());
      size_t best = 0;
      for (size_t i = 0; i < cands.size(); i++) {
        const Tensor feats = vit_features(m, cands[i].experts, ds, 20);
        const double want = name == "knn" ? moce::search::knn_split_top1(feats, label_t, 3, split, {})
                                          : moce::search::logme(feats, label_t).score;
        CHECK(e["scores"][i].get<double>() == doctest::Approx(want).epsilon(1e-12));
        if (e["scores"][i].get<double>() > e["scores"][best].get<double>()) best = i;
      }
      CHECK(e["choice"] == best);
      CHECK(e["experts"] == json(cands[best].experts));
      CHECK(e["cpu_seconds"].get<double>() > 0);
      CHECK(e["wall_seconds"].get<double>() >= e["shared_wall_seconds"].get<double>());
      CHECK(e["shared_wall_seconds"].get<double>() > 0);
    }
    CHECK(methods["moce"]["shared_wall_seconds"] == 0.0);
    CHECK(methods["moce"]["wall_seconds"].get<double>() > 0);
  }

  TEST_CASE("search methods: bad input as one line naming the flag or the data") {
    MethodsRun& r = methods_run();
    testutil::MoceFixture& f = moce_fixture();
    TempDir out("search_methods_bad");
    const std::string o = out.file("x.json");
    auto search_error = [&](std::vector<std::string> args) {
      args.insert(args.end(), {"--out", o, "--workers", "1"});
      return error_of([&] { run(moce::cmd_search, "search", args); });
    };
    // One class; two classes of one image each (nothing to hold out).
    std::filesystem::create_directories(out.file("one/only"));
    std::filesystem::create_directories(out.file("tiny/a"));
    std::filesystem::create_directories(out.file("tiny/b"));
    for (int i = 0; i < 3; i++)
      std::filesystem::copy_file(f.data + "/class0/" + std::to_string(i) + ".png", out.file("one/only/" + std::to_string(i) + ".png"));
    std::filesystem::copy_file(f.data + "/class0/0.png", out.file("tiny/a/0.png"));
    std::filesystem::copy_file(f.data + "/class1/0.png", out.file("tiny/b/0.png"));
    CHECK(search_error({"--model", r.model, "--data", out.file("one"), "--method", "knn"}).find("has 1 class") != std::string::npos);
    CHECK(search_error({"--model", r.model, "--data", out.file("one"), "--method", "logme"}).find("has 1 class") != std::string::npos);
    CHECK(search_error({"--model", r.model, "--data", out.file("tiny"), "--method", "knn"}).find("too few images (2)") !=
          std::string::npos);
    CHECK(search_error({"--model", f.init(), "--data", f.data, "--method", "all"}).find("search needs a MoCE model") !=
          std::string::npos);
    CHECK(search_error({"--model", r.model, "--data", f.data, "--method", "bogus"})
              .find("--method bogus: 'bogus' is not a search method") != std::string::npos);
    CHECK(search_error({"--model", r.model, "--data", f.data, "--method", "knn,knn"}).find("'knn' is given twice") !=
          std::string::npos);
    CHECK(search_error({"--model", r.model, "--data", f.data, "--method", "knn", "--val-fraction", "1"})
              .find("--val-fraction must lie in (0, 1)") != std::string::npos);
    CHECK(search_error({"--model", r.model, "--data", f.data, "--method", "knn", "--knn-k", "0"}).find("--knn-k must be positive") !=
          std::string::npos);
    CHECK(!std::filesystem::exists(o));
    const moce::TrainedModel m = moce::load_trained_model(r.model);
    auto none = std::make_shared<data::SubsetDataset>(moce::open_dataset(f.data, true), std::vector<int64_t>{});
    CHECK(error_of([&] { moce::search::run_search_methods(m, none, "nothing", {"logme"}, one_worker(), quiet_options()); })
              .find("--data nothing holds no images") != std::string::npos);
    const moce::TrainedModel dense = moce::load_trained_model(f.init());
    CHECK(error_of([&] { moce::search::candidate_paths(dense); }).find("this is a dense model") != std::string::npos);
  }
}
