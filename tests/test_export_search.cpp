// test_export_search.cpp: `moce search` and `moce export` on the tiny end-to-end fixture (tests/moce_fixture.h: a dense
// MAE, its clusters, MoCE and TokenMoE runs continued from it). Checks, each against a reference of its own:
//   - the export holds exactly timm's ViT names and shapes (written out here from timm's VisionTransformer), the chosen
//     expert's slice of every stacked MoE weight and the source's other tensors bit for bit;
//   - its forward (model/vit's load_vit) equals the MoCE model's with each chosen gate forced to one-hot, bit for bit
//     (the routed model instead scales each MoE output by its gate value: shown to differ), and the dense MAE's export
//     equals the MAE's encoder bit for bit;
//   - the parameter counts against the formula of the architecture;
//   - search: a downstream set drawn from one known cluster picks that cluster, with the experts the argmax of each
//     layer's gate on its centroid computed here in f64 from the file's tensors; the votes over the whole training set
//     equal the clustering's own argmax assignment; `export --experts auto` and its gate figures agree with it;
//   - bad input as one-line errors naming the flag or file;
//   - suite `export timm` (optional, `make test-timm`): timm's VisionTransformer loads each export strictly
//     (tests/fixtures/timm_features.py) and its tokens and pooled features on real images equal model/vit's within
//     1e-5; skips with a message where no python ($MOCE_TIMM_PYTHON, else python3) imports timm and torch.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>

#include "data/dataset.h"
#include "data/idx.h"
#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "model/mae.h"
#include "model/vit.h"
#include "moce/cmd/commands.h"
#include "moce/common/dataset.h"
#include "moce/export/export.h"
#include "moce/search/search.h"
#include "moce/train/checkpoint.h"
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

// One MoCE and one TokenMoE run from the fixture's MAE, trained once for the suite.
struct Runs {
  TempDir dir{"export_search_runs"};
  std::string moce = dir.file("moce") + "/weights.safetensors", tokenmoe = dir.file("tok") + "/weights.safetensors";
  Runs() {
    REQUIRE(moce_fixture().train("moce", dir.file("moce")) == 0);
    REQUIRE(moce_fixture().train("tokenmoe", dir.file("tok"), {"--epochs", "1"}) == 0);
  }
};
Runs& runs() {
  static Runs r;
  return r;
}

// timm's VisionTransformer(num_classes=0, class_token=True, global_pool='token') state-dict names and shapes, from
// timm/models/vision_transformer.py (PatchEmbed's conv, Block's norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2).
std::map<std::string, eng::Shape> timm_vit_shapes(int64_t depth, int64_t dim, int64_t hidden, int64_t chans,
                                                  int64_t patch, int64_t patches) {
  std::map<std::string, eng::Shape> s = {{"cls_token", {1, 1, dim}},
                                         {"pos_embed", {1, 1 + patches, dim}},
                                         {"patch_embed.proj.weight", {dim, chans, patch, patch}},
                                         {"patch_embed.proj.bias", {dim}},
                                         {"norm.weight", {dim}},
                                         {"norm.bias", {dim}}};
  for (int64_t b = 0; b < depth; b++) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    s[p + "norm1.weight"] = {dim};
    s[p + "norm1.bias"] = {dim};
    s[p + "attn.qkv.weight"] = {3 * dim, dim};
    s[p + "attn.qkv.bias"] = {3 * dim};
    s[p + "attn.proj.weight"] = {dim, dim};
    s[p + "attn.proj.bias"] = {dim};
    s[p + "norm2.weight"] = {dim};
    s[p + "norm2.bias"] = {dim};
    s[p + "mlp.fc1.weight"] = {hidden, dim};
    s[p + "mlp.fc1.bias"] = {hidden};
    s[p + "mlp.fc2.weight"] = {dim, hidden};
    s[p + "mlp.fc2.bias"] = {dim};
  }
  return s;
}

// Row e of a stacked [E, ...] tensor as floats, read from raw values (no engine view).
std::vector<float> slice_values(const Tensor& stacked, int64_t e) {
  const std::vector<float> all = stacked.to_vector<float>();
  const size_t per = all.size() / size_t(stacked.size(0));
  return std::vector<float>(all.begin() + long(e * per), all.begin() + long((e + 1) * per));
}

// Checks an export file against its source model file: timm's names and shapes, each MoE block's MLP the chosen
// expert's slice, everything else the source's tensor of the same name, bit for bit.
void check_export_tensors(const std::string& export_file, const std::string& source_file,
                          const std::map<int64_t, int64_t>& expert_of_block) {
  eng::SafetensorsFile x = eng::load_safetensors(export_file), src = eng::load_safetensors(source_file);
  const model::MaeConfig cfg = model::mae_config("mae_test_tiny");
  const int64_t hidden = int64_t(double(cfg.embed_dim) * cfg.mlp_ratio);
  const auto want = timm_vit_shapes(cfg.depth, cfg.embed_dim, hidden, cfg.in_chans, cfg.patch_size, cfg.num_patches());
  REQUIRE(x.tensors.size() == want.size());
  for (const auto& [name, shape] : want) {
    CAPTURE(name);
    REQUIRE(x.tensors.count(name) == 1);
    CHECK(x.tensors.at(name).shape() == shape);
    const std::vector<float> got = x.tensors.at(name).to_vector<float>();
    const size_t mlp = name.find(".mlp.");
    const int64_t block = name.rfind("blocks.", 0) == 0 ? std::stoll(name.substr(7)) : -1;
    if (mlp != std::string::npos && expert_of_block.count(block)) {
      CHECK(src.tensors.at(name).dim() == int64_t(shape.size()) + 1);  // stacked in the source
      CHECK(got == slice_values(src.tensors.at(name), expert_of_block.at(block)));
    } else {
      CHECK(got == src.tensors.at(name).to_vector<float>());
    }
  }
}

Tensor test_images(int64_t n, uint64_t seed) { return eng::Generator(seed).uniform({n, 3, 16, 16}, 0.0, 1.0); }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector<float>() == b.to_vector<float>();
}

moce::exporter::ExportResult export_quietly(moce::exporter::ExportOptions o) {
  o.workers = 1;
  return moce::exporter::run_export(o);
}

}  // namespace

TEST_SUITE("export search") {
  TEST_CASE("export of a MoCE model: timm's names, the chosen experts, equal to the one-hot routed model bit for bit") {
    Runs& r = runs();
    TempDir out("export_moce");
    const std::string file = out.file("vit.safetensors");
    moce::exporter::ExportOptions o;
    o.model_file = r.moce;
    o.experts = "3,6";
    o.out = file;
    const moce::exporter::ExportResult res = export_quietly(o);
    check_export_tensors(file, r.moce, {{0, 3}, {1, 6}});

    // The metadata: the config model/vit builds from, the source and the experts per block.
    eng::SafetensorsFile x = eng::load_safetensors(file);
    CHECK(x.metadata.at("format") == moce::exporter::kExportFormat);
    const model::VitConfig cfg = model::vit_config_from_json(json::parse(x.metadata.at("config")));
    CHECK(cfg.depth == 2);
    CHECK(cfg.num_classes == 0);
    CHECK(cfg.pool == model::VitPool::Token);
    const json meta = json::parse(x.metadata.at("export"));
    CHECK(meta["source_model"] == r.moce);
    CHECK(meta["method"] == "moce");
    CHECK(meta["experts"] == json::parse(R"([{"block":0,"expert":3},{"block":1,"expert":6}])"));

    // The parameter counts by the architecture's formula (D 16, H 64, 2 blocks, 16 patches of 4x4x3, 8 experts,
    // gates on 16-d centroids): a block's MLP is 2DH + H + D, the rest of a block 4D + 3D² + 3D + D² + D.
    const int64_t D = 16, H = 64, L = 16, depth = 2, E = 8, dc = 16;
    const int64_t mlp = 2 * D * H + H + D, rest = 4 * D + 3 * D * D + 3 * D + D * D + D;
    const int64_t vit = D * 3 * 16 + D + D + (1 + L) * D + depth * (rest + mlp) + 2 * D;
    CHECK(res.export_tensors == vit);
    CHECK(res.source_encoder_tensors == vit + depth * ((E - 1) * mlp + E * dc));

    // Forward: the exported ViT against the MoCE model with each layer's gate one-hot on its chosen expert (gate row
    // e* reads 1e4 on a fixed embedding, the others 0: softmax gives exactly 1 and 0), bit for bit.
    model::VisionTransformer loaded = model::load_vit(file);
    moce::TrainedModel m = moce::load_trained_model(r.moce);
    const Tensor images = test_images(5, 11);
    Tensor routed;
    {
      eng::NoGradGuard ng;
      moce::MoceRouter router(m, "", eng::Device::cpu());
      routed = m.mae->encode_all(images);  // the routed model, gate values < 1
      m.mae->set_input_hook({});
    }
    const std::vector<int64_t> chosen = {3, 6};
    std::vector<float> first(size_t(dc), 0.0f);
    first[0] = 1.0f;
    std::vector<float> embed;
    for (int i = 0; i < 5; i++) embed.insert(embed.end(), first.begin(), first.end());
    for (size_t l = 0; l < m.layers.size(); l++) {
      std::vector<float> gate(size_t(E * dc), 0.0f);
      gate[size_t(chosen[l] * dc)] = 1e4f;
      eng::NoGradGuard ng;
      m.layers[l]->gate_weight.copy_(Tensor::from_vector(gate, {E, dc}));
      m.layers[l]->set_cluster_embeddings(Tensor::from_vector(embed, {5, dc}));
    }
    eng::NoGradGuard ng;
    const Tensor forced = m.mae->encode_all(images);
    const Tensor exported = loaded.forward_tokens(images);
    for (const auto& layer : m.layers) CHECK(layer->stats().gate_confidence == 1.0);
    CHECK(same_bits(exported, forced));
    CHECK(eng::amax(eng::abs(eng::sub(exported, routed))).item() > 1e-4);  // the scale the export drops shows
  }

  TEST_CASE("export of a TokenMoE model (explicit experts) and of a dense MAE; norm_avg pooling") {
    Runs& r = runs();
    TempDir out("export_tok");
    moce::exporter::ExportOptions o;
    o.model_file = r.tokenmoe;
    o.experts = "5";  // mae_test_tiny's TokenMoE layer is block 1 only
    o.out = out.file("tok.safetensors");
    export_quietly(o);
    check_export_tensors(o.out, r.tokenmoe, {{1, 5}});

    // Its forward against a ViT put together here from the source file's raw tensors (the slice for block 1).
    eng::SafetensorsFile src = eng::load_safetensors(r.tokenmoe);
    model::VisionTransformer ref(model::vit_config_from_encoder(model::mae_config("mae_test_tiny"), model::VitPool::Token, 0), 9);
    std::map<std::string, Tensor> weights;
    for (const auto& [name, t] : ref.state_dict()) {
      const Tensor& s = src.tensors.at(name);
      weights[name] = s.dim() == t.dim() ? s : Tensor::from_vector(slice_values(s, 5), t.shape());
    }
    ref.load_state_dict(weights, "reference");
    const Tensor images = test_images(3, 12);
    {
      eng::NoGradGuard ng;
      CHECK(same_bits(model::load_vit(o.out).forward_tokens(images), ref.forward_tokens(images)));
    }

    // The dense MAE: no choice to make; its export computes the MAE encoder's tokens and features bit for bit.
    o.model_file = moce_fixture().init();
    o.experts = "auto";
    o.pool = "norm_avg";
    o.out = out.file("mae.safetensors");
    const moce::exporter::ExportResult res = export_quietly(o);
    CHECK(res.experts.empty());
    model::MaskedAutoencoder mae = moce::load_mae(moce_fixture().init(), "", false, 0);
    model::VisionTransformer vit = model::load_vit(o.out);
    CHECK(vit.config().pool == model::VitPool::NormAvg);
    eng::NoGradGuard ng;
    CHECK(same_bits(vit.forward_tokens(images), mae.encode_all(images)));
    CHECK(same_bits(vit.features(images), mae.features(images)));
    CHECK(res.export_tensors == res.source_encoder_tensors);
  }

  TEST_CASE("search: a downstream set from one cluster picks it; the experts are its gates' argmax (f64)") {
    Runs& r = runs();
    testutil::MoceFixture& f = moce_fixture();
    TempDir out("search_planted");
    // The clustering's own plain argmax of every training image, and the images' paths (the bank's rows).
    eng::SafetensorsFile assign = eng::load_safetensors(f.clusters + "/assignments.safetensors");
    const std::vector<int32_t> argmax = assign.tensors.at("cluster_argmax").to_vector<int32_t>();
    std::vector<std::string> paths;
    {
      std::istringstream in(read_text(f.clusters + "/bank.safetensors.paths"));
      for (std::string line; std::getline(in, line);) paths.push_back(line);
    }
    REQUIRE(paths.size() == argmax.size());
    std::vector<int64_t> sizes(3, 0);
    for (int32_t c : argmax) sizes[size_t(c)]++;

    // The whole training set votes as the clustering assigned it (same MAE, same pooling, argmax f.C).
    const std::string whole_json = out.file("whole.json");
    REQUIRE(run(moce::cmd_search, "search", {"--model", r.moce, "--data", f.data, "--out", whole_json, "--workers", "1"}) == 0);
    const json whole = json::parse(read_text(whole_json));
    CHECK(whole["votes"] == json(sizes));
    CHECK(whole["images"] == 72);

    // Plant: a downstream folder of every image of the highest-numbered non-empty cluster p, plus 5 images of another
    // cluster q (the lowest-numbered other), so the votes are {p: n_p, q: 5} and a search that ignored them (cluster 0,
    // or the training set's biggest cluster, the first on a tie) would pick otherwise.
    int64_t planted = -1, other = -1;
    for (int64_t c = 0; c < 3; c++)
      if (sizes[size_t(c)] > 5) planted = c;
    for (int64_t c = 0; c < 3; c++)
      if (c != planted && sizes[size_t(c)] >= 5 && other < 0) other = c;
    REQUIRE(planted > 0);
    REQUIRE(other >= 0);
    const std::string down = out.file("down");
    std::filesystem::create_directories(down + "/task");
    int64_t copied = 0, extra = 0;
    for (size_t i = 0; i < paths.size(); i++) {
      const bool take = argmax[i] == planted || (argmax[i] == other && extra < 5);
      if (argmax[i] == other && take) extra++;
      if (take) std::filesystem::copy_file(paths[i], down + "/task/" + std::to_string(copied++) + ".png");
    }
    const int64_t n_planted = copied - extra;
    const std::string search_json = out.file("search.json");
    REQUIRE(run(moce::cmd_search, "search", {"--model", r.moce, "--data", down, "--out", search_json, "--workers", "1"}) == 0);
    const json s = json::parse(read_text(search_json));
    CHECK(s["format"] == "moce-search");
    CHECK(s["cluster"] == planted);
    CHECK(s["images"] == copied);
    std::vector<int64_t> want_votes(3, 0);
    want_votes[size_t(planted)] = n_planted;
    want_votes[size_t(other)] = 5;
    CHECK(s["votes"] == json(want_votes));
    CHECK(s["top_clusters"][0]["cluster"] == planted);
    CHECK(s["top_clusters"][1]["cluster"] == other);
    CHECK(s["cluster_share"].get<double>() == doctest::Approx(double(n_planted) / double(copied)).epsilon(1e-12));
    CHECK(s["seconds"].get<double>() > 0);
    CHECK(!testutil::atomic_temporary_left(search_json));

    // The gates of every cluster in f64 from the file's tensors: G[l][c][e] = softmax_e(W_g · C_c); the experts are
    // argmax_e G[l][planted][e], each reported with its value.
    eng::SafetensorsFile w = eng::load_safetensors(r.moce);
    const Tensor centroids = w.tensors.at(moce::kCentroidsTensor);
    const int64_t d = centroids.size(1), M = centroids.size(0);
    const std::vector<double> cv = centroids.to_vector<double>();
    std::vector<int64_t> want;
    std::vector<std::vector<std::vector<double>>> G;
    for (int b : {0, 1}) {
      const Tensor gate = w.tensors.at("blocks." + std::to_string(b) + ".mlp.gate.weight");
      const std::vector<double> g = gate.to_vector<double>();
      const int64_t E = gate.size(0);
      std::vector<std::vector<double>> per_cluster;
      for (int64_t c = 0; c < M; c++) {
        std::vector<double> logit(size_t(E), 0.0);
        for (int64_t e = 0; e < E; e++)
          for (int64_t k = 0; k < d; k++) logit[size_t(e)] += g[size_t(e * d + k)] * cv[size_t(c * d + k)];
        const double top = *std::max_element(logit.begin(), logit.end());
        double z = 0;
        for (double v : logit) z += std::exp(v - top);
        for (double& v : logit) v = std::exp(v - top) / z;
        per_cluster.push_back(logit);
      }
      const std::vector<double>& at = per_cluster[size_t(planted)];
      const int64_t best = int64_t(std::max_element(at.begin(), at.end()) - at.begin());
      want.push_back(best);
      CHECK(s["layers"][size_t(b)]["block"] == b);
      CHECK(s["layers"][size_t(b)]["gate"].get<double>() == doctest::Approx(at[size_t(best)]).epsilon(1e-6));
      G.push_back(per_cluster);
    }
    CHECK(s["experts"] == json(want));

    // export --experts auto runs the same search, writes its search.json, and measures the chosen gates on --data:
    // the mean over the images of G_e at each image's cluster, and the share of images whose top expert is e.
    moce::exporter::ExportOptions o;
    o.model_file = r.moce;
    o.data = down;
    o.out = out.file("auto.safetensors");
    const moce::exporter::ExportResult res = export_quietly(o);
    CHECK(res.experts == want);
    const json written = json::parse(read_text(out.file("auto.search.json")));
    CHECK(written["experts"] == json(want));
    CHECK(written["votes"] == s["votes"]);
    REQUIRE(res.gates.size() == 2);
    for (size_t l = 0; l < 2; l++) {
      const std::vector<double>& at_p = G[l][size_t(planted)];
      const std::vector<double>& at_q = G[l][size_t(other)];
      const int64_t e = want[l];
      const double mean = (double(n_planted) * at_p[size_t(e)] + 5.0 * at_q[size_t(e)]) / double(copied);
      const bool q_top = int64_t(std::max_element(at_q.begin(), at_q.end()) - at_q.begin()) == e;
      CHECK(res.gates[l].mean_gate == doctest::Approx(mean).epsilon(1e-6));
      CHECK(res.gates[l].top_share == doctest::Approx(double(n_planted + (q_top ? 5 : 0)) / double(copied)));
    }
    const json meta = json::parse(eng::load_safetensors(o.out).metadata.at("export"));
    CHECK(meta["search"]["cluster"] == planted);
    check_export_tensors(o.out, r.moce, {{0, want[0]}, {1, want[1]}});
  }

  TEST_CASE("search and export: bad input as one line naming the flag or file") {
    Runs& r = runs();
    testutil::MoceFixture& f = moce_fixture();
    TempDir out("export_search_bad");
    const std::string o = out.file("x.json");
    auto search_error = [&](std::vector<std::string> args) {
      args.insert(args.end(), {"--out", o, "--workers", "1"});
      return error_of([&] { run(moce::cmd_search, "search", args); });
    };
    CHECK(search_error({"--model", r.tokenmoe, "--data", f.data}).find("search needs a MoCE model") != std::string::npos);
    CHECK(search_error({"--model", f.init(), "--data", f.data}).find("search needs a MoCE model") != std::string::npos);
    CHECK(search_error({"--model", r.moce}).find("--data") != std::string::npos);
    CHECK(search_error({"--model", out.file("none"), "--data", f.data}).find("no such file") != std::string::npos);
    CHECK(search_error({"--model", r.moce, "--data", f.data, "--features-checkpoint", out.file("gone.safetensors")})
              .find("--features-checkpoint " + out.file("gone.safetensors") + ": no such file") != std::string::npos);
    std::filesystem::create_directories(out.file("empty/task"));
    CHECK(search_error({"--model", r.moce, "--data", out.file("empty")}).find("has no image files") != std::string::npos);
    {
      moce::TrainedModel m = moce::load_trained_model(r.moce);
      auto none = std::make_shared<data::SubsetDataset>(moce::open_dataset(f.data, true), std::vector<int64_t>{});
      CHECK(error_of([&] { moce::search::search_experts(m, none, "nothing", {}); }).find("--data nothing holds no images") !=
            std::string::npos);
      // A model whose run's --init is gone: the feature MAE is named, with the flag that gives it.
      m.run["init"] = out.file("moved.safetensors");
      CHECK(error_of([&] { moce::search::search_experts(m, moce::open_dataset(f.data, true), f.data, {}); })
                .find("pass --features-checkpoint") != std::string::npos);
    }
    CHECK(!std::filesystem::exists(o));

    auto export_error = [&](const std::string& model, const std::string& experts, std::vector<std::string> extra = {}) {
      std::vector<std::string> args = {"--model", model, "--experts", experts, "--out", out.file("v.safetensors"),
                                       "--workers", "1"};
      args.insert(args.end(), extra.begin(), extra.end());
      return error_of([&] { run(moce::cmd_export, "export", args); });
    };
    CHECK(export_error(r.moce, "1").find("1 given, but the model has 2 MoE layers") != std::string::npos);
    CHECK(export_error(r.moce, "1,8").find("expert 8 is not one of 0..7") != std::string::npos);
    CHECK(export_error(r.moce, "1,x").find("--experts 1,x") != std::string::npos);
    CHECK(export_error(r.moce, "auto").find("give --data") != std::string::npos);
    CHECK(export_error(r.tokenmoe, "auto", {"--data", f.data}).find("--experts auto: the search reads MoCE's clusters") !=
          std::string::npos);
    CHECK(export_error(f.init(), "0").find("dense model") != std::string::npos);
    CHECK(export_error(r.moce, "1,2", {"--pool", "avg"}).find("--pool avg") != std::string::npos);
    CHECK(export_error(r.moce, "1,2", {"--pool", "max"}).find("--pool max: unknown ViT pooling 'max'") != std::string::npos);
    CHECK(error_of([&] {
            run(moce::cmd_export, "export", {"--model", r.moce, "--experts", "1,2", "--out", out.file("no/dir/v.safetensors")});
          }).find("does not exist") != std::string::npos);
    CHECK(!std::filesystem::exists(out.file("v.safetensors")));
    CHECK(error_of([&] { model::load_vit(r.moce); }).find(r.moce) == 0);  // a MoCE file is not a ViT
  }
}

// ---- timm: the export loads in timm's VisionTransformer and gives the same features --------------------------------
// Optional: PyTorch and timm are never needed to build, run or test the engine. The interpreter is $MOCE_TIMM_PYTHON,
// else python3; where neither imports timm and torch the suite skips with a message (`make test-timm`).
namespace {

// s as one single-quoted shell word.
std::string shell_quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The first of $MOCE_TIMM_PYTHON, python3 that imports timm, torch and safetensors ("" when none does), and what was
// tried (for the skip message).
std::string timm_python(std::string& tried) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MOCE_TIMM_PYTHON"); env && *env) candidates.push_back(env);
  candidates.push_back("python3");
  for (const std::string& py : candidates) {
    tried += (tried.empty() ? "" : ", ") + py;
    const std::string probe = shell_quoted(py) + " -c 'import timm, torch, safetensors' >/dev/null 2>&1";
    if (std::system(probe.c_str()) == 0) return py;
  }
  return "";
}

std::string timm_script() {
  // tests run from the repository root; __FILE__ is the path the compiler was given.
  std::string script = (std::filesystem::path(__FILE__).parent_path() / "fixtures/timm_features.py").string();
  return std::filesystem::exists(script) ? script : "tests/fixtures/timm_features.py";
}

// A few real images at the fixture's 16x16, normalised as for evaluation (data::eval_pipeline: resize the shorter side,
// center crop, ImageNet mean/std): Fashion-MNIST test images (grey, as three channels) and CIFAR-10 test images from
// ../shared/data where each is present; `sources` says which. Undefined when neither is.
Tensor real_images(std::string& sources) {
  const data::Pipeline eval = data::eval_pipeline(16);
  std::vector<Tensor> images;
  if (!data::fashion_mnist_dir().empty()) {
    auto fm = data::fashion_mnist("t10k", 40);
    for (int64_t i = 0; i < 40; i += 10) images.push_back(eval.apply(fm->get(i).image, 0, 0, i));
    sources = "4 Fashion-MNIST";
  }
  const std::string cifar = "../shared/data/cifar10/test";
  if (std::filesystem::is_directory(cifar)) {
    data::ImageFolder folder(cifar);
    for (int64_t k = 0; k < 4; k++) {
      const int64_t i = k * folder.size() / 4;  // four classes (the folder lists class by class)
      images.push_back(eval.apply(folder.get(i).image, 0, 0, i));
    }
    sources += std::string(sources.empty() ? "" : " + ") + "4 CIFAR-10";
  }
  return images.empty() ? Tensor() : eng::stack(images, 0);
}

struct TimmFeatures {
  Tensor tokens, pooled;
  std::map<std::string, std::string> metadata;
};

// Runs tests/fixtures/timm_features.py on `export_file` and `images`; CHECKs its exit code (its output shown on
// failure) and returns what it wrote.
TimmFeatures timm_features(const std::string& python, const std::string& export_file, const Tensor& images,
                           const TempDir& dir) {
  const std::string in = dir.file("images.safetensors"), out = dir.file("timm.safetensors"), log = dir.file("timm.log");
  std::filesystem::remove(out);
  eng::save_safetensors(in, {{"images", images}});
  const std::string cmd = shell_quoted(python) + " " + shell_quoted(timm_script()) + " " + shell_quoted(export_file) +
                          " " + shell_quoted(in) + " " + shell_quoted(out) + " >" + shell_quoted(log) + " 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO("timm_features.py said: " << read_text(log));
  REQUIRE(rc == 0);
  eng::SafetensorsFile f = eng::load_safetensors(out);
  return {f.tensors.at("tokens"), f.tensors.at("pooled"), f.metadata};
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < x.size(); i++) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

// The export against timm on `images`: timm's strict load found no missing or unexpected key, and its tokens [N, 1 + L, D]
// and pooled features equal model/vit's within 1e-5 (both after the final norm, so of scale ~1). Returns timm's tokens.
Tensor check_against_timm(const std::string& python, const std::string& export_file, const std::string& what,
                          const Tensor& images, const TempDir& dir) {
  CAPTURE(what);
  const TimmFeatures t = timm_features(python, export_file, images, dir);
  CHECK(t.metadata.at("missing_keys") == "[]");
  CHECK(t.metadata.at("unexpected_keys") == "[]");
  model::VisionTransformer ours = model::load_vit(export_file);
  CHECK(t.metadata.at("global_pool") == model::pool_name(ours.config().pool));
  eng::NoGradGuard ng;
  const Tensor tokens = ours.forward_tokens(images), pooled = ours.features(images);
  CHECK(t.tokens.shape() == eng::Shape{images.size(0), 1 + ours.config().num_patches(), ours.config().embed_dim});
  const double dt = max_abs_diff(tokens, t.tokens), dp = max_abs_diff(pooled, t.pooled);
  MESSAGE(what << " (" << pool_name(ours.config().pool) << ", timm " << t.metadata.at("timm_version")
                << "): max |ours - timm| tokens " << dt << ", pooled " << dp << " (max |token| "
                << eng::amax(eng::abs(tokens)).item() << ")");
  CHECK(dt <= 1e-5);
  CHECK(dp <= 1e-5);
  return t.tokens;
}

}  // namespace

TEST_SUITE("export timm") {
  TEST_CASE("the export loads strictly in timm's VisionTransformer and gives our features within 1e-5") {
    std::string tried, sources;
    const std::string python = timm_python(tried);
    if (python.empty()) {
      MESSAGE("skipped: timm/torch not importable (set MOCE_TIMM_PYTHON to a python that has them; tried " << tried
                                                                                                         << ")");
      return;
    }
    const Tensor images = real_images(sources);
    if (!images.defined()) {
      MESSAGE("skipped: no real images (neither Fashion-MNIST, Debian's dataset-fashion-mnist, nor ../shared/data/cifar10)");
      return;
    }
    MESSAGE("timm check with " << python << " on " << sources << " test images");
    Runs& r = runs();
    TempDir out("export_timm");
    moce::exporter::ExportOptions o;
    for (const std::string pool : {"token", "norm_avg"}) {
      CAPTURE(pool);
      o.pool = pool;
      // The dense MAE's encoder.
      o.model_file = moce_fixture().init();
      o.experts = "auto";
      o.out = out.file("mae_" + pool + ".safetensors");
      export_quietly(o);
      const Tensor dense = check_against_timm(python, o.out, "dense MAE export", images, out);
      // A MoCE path: the chosen experts' MLPs in blocks 0 and 1.
      o.model_file = r.moce;
      o.experts = "3,6";
      o.out = out.file("moce_" + pool + ".safetensors");
      export_quietly(o);
      const Tensor moce_path = check_against_timm(python, o.out, "MoCE export, experts 3,6", images, out);
      // The comparison can tell models apart: the expert path's tokens are not the dense encoder's.
      const double apart = max_abs_diff(moce_path, dense);
      MESSAGE("max |MoCE path - dense MAE| under timm: " << apart);
      CHECK(apart > 1e-3);
    }
    // A TokenMoE path (block 1's expert 5), token pooling.
    o.model_file = r.tokenmoe;
    o.experts = "5";
    o.pool = "token";
    o.out = out.file("tok.safetensors");
    export_quietly(o);
    check_against_timm(python, o.out, "TokenMoE export, expert 5", images, out);
  }
}
