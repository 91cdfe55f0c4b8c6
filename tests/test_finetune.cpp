// test_finetune.cpp: moce/finetune/ (suite "finetune"): the three kinds of model file give the same encoder bit for
// bit (an export and the MAE it came from, and the export's tensors without metadata read as a timm file with the sizes
// inferred from the shapes); fine-tuning a fresh tiny ViT on three real Fashion-MNIST classes beats a stated floor;
// the same seed gives the same bits and the encoder is left as it was; the lr grid picks by validation (the tie rule
// on fixed scores, and end to end: every grid entry scored, the tests' mean and std recomputed in f64); moce finetune
// and moce linprobe end to end; each bad input (one class, a test class training lacks, another image size, a model
// file of another shape or no ViT, a zero or negative lr, zero steps) is a one-line error or the stated handling.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "data/dataset.h"
#include "data/idx.h"
#include "data/image.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "model/vit.h"
#include "moce/cmd/commands.h"
#include "moce/common/plot.h"
#include "moce/finetune/downstream.h"
#include "moce/finetune/finetune.h"
#include "moce/finetune/linprobe.h"
#include "moce/finetune/model_file.h"
#include "moce/train/checkpoint.h"
#include "tests/moce_fixture.h"

using eng::Tensor;
using json = nlohmann::json;
using testutil::error_of;
using testutil::moce_fixture;
using testutil::read_text;
using testutil::run;
namespace ft = moce::finetune;

namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  auto x = a.contiguous().to_vector<float>(), y = b.contiguous().to_vector<float>();
  return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

// A tiny ViT (16 px, patch 4, dim 32, depth 2, 2 heads), freshly initialised: fine-tuning from scratch on easy classes.
model::VisionTransformer tiny_vit(uint64_t seed) {
  model::VitConfig c;
  c.name = "tiny";
  c.img_size = 16, c.patch_size = 4, c.embed_dim = 32, c.depth = 2, c.num_heads = 2;
  c.pool = model::VitPool::Token;
  return model::VisionTransformer(c, seed);
}

// Class folders of `size` x `size` images: class c is noise with channel c lifted (easy), `per_class` each.
void write_folder(const std::string& root, const std::vector<std::string>& classes, int per_class, int size,
                  uint64_t seed = 9) {
  eng::Generator g(seed);
  for (size_t c = 0; c < classes.size(); c++) {
    const std::string dir = root + "/" + classes[c];
    std::filesystem::create_directories(dir);
    for (int i = 0; i < per_class; i++) {
      std::vector<float> v = g.uniform({3, size, size}, 0.0, 0.4).to_vector<float>();
      for (int p = 0; p < size * size; p++) v[size_t((c % 3) * size * size + p)] += 0.5f;
      data::write_png(dir + "/" + std::to_string(i) + ".png", Tensor::from_vector(v, {3, size, size}));
    }
  }
}

ft::Downstream folder_task(const std::string& root, double test_fraction = 0.25) {
  ft::DownstreamOptions o;
  o.data = root;
  o.test_fraction = test_fraction;
  return ft::open_downstream(o);
}

ft::RunOptions quick(double lr, uint64_t seed, int64_t steps) {
  ft::RunOptions o;
  o.lr = lr;
  o.seed = seed;
  o.steps = steps;
  o.batch = 16;
  o.workers = 1;
  o.log_every = 0;
  o.tag = "test";
  return o;
}

}  // namespace

TEST_SUITE("finetune") {
  TEST_CASE("model files: an export, the MAE it came from and its timm-style copy give the same encoder bit for bit") {
    auto& fx = moce_fixture();
    testutil::TempDir dir("finetune_files");
    const std::string exported = dir.file("vit.safetensors"), timm = dir.file("timm.safetensors");
    REQUIRE(run(moce::cmd_export, "export", {"--model", fx.init(), "--out", exported}) == 0);
    eng::SafetensorsFile ef = eng::load_safetensors(exported);
    eng::save_safetensors(timm, ef.tensors);  // timm's names, no metadata of ours

    ft::EncoderFile from_export = ft::load_encoder(exported), from_mae = ft::load_encoder(fx.init());
    ft::EncoderFile from_timm = ft::load_encoder(timm, /*heads=*/2);
    CHECK(from_export.kind == "moce-vit-export");
    CHECK(from_mae.kind == "mae");
    CHECK(from_timm.kind == "timm");
    // The sizes read from the shapes are mae_test_tiny's.
    const model::VitConfig& tc = from_timm.vit.config();
    CHECK(tc.img_size == 16);
    CHECK(tc.patch_size == 4);
    CHECK(tc.in_chans == 3);
    CHECK(tc.embed_dim == 16);
    CHECK(tc.depth == 2);
    CHECK(tc.num_heads == 2);
    CHECK(tc.mlp_ratio == 4.0);
    CHECK(tc.num_classes == 0);
    CHECK(tc.pool == model::VitPool::Token);

    Tensor imgs = eng::Generator(3).normal({5, 3, 16, 16});
    for (model::VitPool pool : {model::VitPool::Avg, model::VitPool::Token}) {
      CAPTURE(model::pool_name(pool));
      Tensor a = ft::classifier_from_encoder(from_export.vit, 3, pool, 7).forward(imgs);
      CHECK(same_bits(a, ft::classifier_from_encoder(from_mae.vit, 3, pool, 7).forward(imgs)));
      CHECK(same_bits(a, ft::classifier_from_encoder(from_timm.vit, 3, pool, 7).forward(imgs)));
    }
    // The MAE's own encoder tokens, through model::vit_from_mae, are the ones the loaded encoder computes.
    model::MaskedAutoencoder mae = moce::load_mae(fx.init(), "", false, 0);
    CHECK(same_bits(model::vit_from_mae(mae, model::VitPool::Token, 0, 0).forward_tokens(imgs),
                    from_export.vit.forward_tokens(imgs)));
    // The head is fresh and N(0, 2e-5); fc_norm starts at unit weight and zero bias; the encoder is copied, not shared.
    model::VisionTransformer clf = ft::classifier_from_encoder(from_export.vit, 3, model::VitPool::Avg, 7);
    CHECK(clf.head.weight.shape() == eng::Shape{3, 16});
    double ss = 0;
    for (float w : clf.head.weight.to_vector<float>()) ss += double(w) * w;
    CHECK(std::sqrt(ss / 48) < 1e-4);
    for (float w : clf.fc_norm.weight.to_vector<float>()) CHECK(w == 1.0f);
    CHECK(clf.cls_token.data<float>() != from_export.vit.cls_token.data<float>());
  }

  TEST_CASE("fine-tuning a fresh tiny ViT on Fashion-MNIST trouser / bag / sneaker beats 80% top-1 (chance 33%)") {
    if (data::fashion_mnist_dir().empty()) {
      MESSAGE("skipped: Fashion-MNIST is not installed (Debian's dataset-fashion-mnist)");
      return;
    }
    ft::DownstreamOptions o;
    o.data = o.test_data = "fashion-mnist";
    o.classes = "Trouser,Bag,Sneaker";
    o.limit = 300;
    o.limit_test = 150;
    ft::Downstream task = ft::open_downstream(o);
    CHECK(task.classes == std::vector<std::string>{"Trouser", "Bag", "Sneaker"});
    CHECK(task.train->size() == 300);
    CHECK(task.test->size() == 150);
    CHECK(task.image_height == 28);
    CHECK(has(ft::resize_note(task, 16), "resized"));  // 28x28 images, a 16 px model: resized and said
    // The test labels are the task's (0..2), not Fashion-MNIST's (1, 8, 7).
    for (int64_t i = 0; i < task.test->size(); i++) CHECK(task.test->label(i) < 3);
    ft::RunOptions ro = quick(3e-2, 0, 60);
    ro.batch = 64;
    ft::RunResult r = ft::finetune_once(tiny_vit(1), task.train, task.test, 3, ro);
    MESSAGE("Fashion-MNIST 3 classes, 60 steps from scratch: test top-1 " << r.top1 << ", " << r.seconds << " s");
    CHECK(!r.diverged);
    CHECK(r.losses.size() == 60);
    CHECK(r.top1 > 0.8);
    CHECK(r.losses.back() < r.losses.front());
    CHECK(r.cpu_seconds > 0);
  }

  TEST_CASE("--per-class: the first N images of every class of a folder stored class by class, before --limit") {
    testutil::TempDir dir("finetune_per_class");
    write_folder(dir.file("data"), {"a", "b", "c"}, 6, 8);
    std::shared_ptr<const data::Dataset> base = std::make_shared<data::ImageFolder>(dir.file("data"));
    // Counted from the definition: walk the base in order, keep an image while its class has fewer than N kept.
    auto expected = [&](int64_t n, int64_t limit, const std::vector<int64_t>& keep) {
      std::vector<int64_t> idx, taken(3, 0);
      for (int64_t i = 0; i < base->size(); i++) {
        const int64_t c = base->label(i);
        if (std::find(keep.begin(), keep.end(), c) == keep.end() || taken[size_t(c)] >= n) continue;
        if (limit > 0 && int64_t(idx.size()) >= limit) break;
        taken[size_t(c)]++;
        idx.push_back(i);
      }
      return idx;
    };
    auto labels_of = [](const data::Dataset& d) {
      std::vector<int64_t> v;
      for (int64_t i = 0; i < d.size(); i++) v.push_back(d.label(i));
      return v;
    };
    auto base_labels = [&](const std::vector<int64_t>& idx, const std::vector<int64_t>& keep) {
      std::vector<int64_t> v;
      for (int64_t i : idx)
        v.push_back(int64_t(std::find(keep.begin(), keep.end(), base->label(i)) - keep.begin()));
      return v;
    };
    // A plain --limit keeps the first class only; --per-class keeps every class.
    CHECK(labels_of(*ft::select_classes(base, "", 4)) == std::vector<int64_t>{0, 0, 0, 0});
    auto two = ft::select_classes(base, "", 0, 2);
    CHECK(two->size() == 6);
    CHECK(labels_of(*two) == base_labels(expected(2, 0, {0, 1, 2}), {0, 1, 2}));
    auto cb = ft::select_classes(base, "c,a", 3, 2);  // per class first, then the limit
    CHECK(labels_of(*cb) == base_labels(expected(2, 3, {2, 0}), {2, 0}));
    CHECK(cb->classes() == std::vector<std::string>{"c", "a"});
    // The downstream task: --per-class on the training data, --per-class-test on the test folder.
    ft::DownstreamOptions o;
    o.data = o.test_data = dir.file("data");
    o.per_class = 4;
    o.per_class_test = 1;
    ft::Downstream task = ft::open_downstream(o);
    CHECK(task.train->size() == 12);
    CHECK(task.test->size() == 3);
    CHECK(labels_of(*task.test) == std::vector<int64_t>{0, 1, 2});
    o.per_class = -1;
    CHECK_THROWS_WITH_AS(ft::open_downstream(o), doctest::Contains("--per-class -1"), eng::Error);
    o.per_class = 2;
    o.test_data.clear();  // a carved test set follows --per-class; --per-class-test alone is refused
    CHECK_THROWS_WITH_AS(ft::open_downstream(o), doctest::Contains("--per-class-test needs --test-data"), eng::Error);
  }

  TEST_CASE("fine-tuning: the same seed gives the same bits, another seed other bits; the encoder is left as it was") {
    testutil::TempDir dir("finetune_det");
    write_folder(dir.file("data"), {"a", "b", "c"}, 16, 16);
    ft::Downstream task = folder_task(dir.file("data"));
    model::VisionTransformer enc = tiny_vit(2);
    std::map<std::string, Tensor> before;
    for (auto& [name, t] : enc.state_dict()) before[name] = t.clone();
    ft::RunResult a = ft::finetune_once(enc, task.train_part, task.val, 3, quick(1e-2, 4, 6));
    ft::RunResult b = ft::finetune_once(enc, task.train_part, task.val, 3, quick(1e-2, 4, 6));
    ft::RunResult c = ft::finetune_once(enc, task.train_part, task.val, 3, quick(1e-2, 5, 6));
    REQUIRE(a.losses.size() == 6);
    for (size_t i = 0; i < a.losses.size(); i++) CHECK(std::memcmp(&a.losses[i], &b.losses[i], sizeof(double)) == 0);
    CHECK(std::memcmp(&a.eval_loss, &b.eval_loss, sizeof(double)) == 0);
    CHECK(a.top1 == b.top1);
    CHECK(a.losses != c.losses);
    for (auto& [name, t] : enc.state_dict()) CHECK_MESSAGE(same_bits(t, before[name]), name);
  }

  TEST_CASE("the lr grid: the best val top-1 wins, ties go to the lower val loss; the protocol's figures recomputed") {
    auto point = [](double lr, double top1, double loss) {
      ft::GridPoint g;
      g.lr = lr;
      g.val.top1 = top1;
      g.val.eval_loss = loss;
      return g;
    };
    CHECK(ft::best_grid_point({point(1e-3, 0.5, 1.0), point(1e-2, 0.9, 0.8), point(1e-1, 0.7, 0.1)}) == 1);
    CHECK(ft::best_grid_point({point(1e-3, 0.9, 1.0), point(1e-2, 0.9, 0.3), point(1e-1, 0.9, 0.5)}) == 1);
    CHECK(ft::best_grid_point({point(1e-3, 0.9, 0.3), point(1e-2, 0.9, 0.3)}) == 0);  // full tie: the earlier lr
    ft::GridPoint diverged = point(3e-1, 0.0, INFINITY);
    diverged.val.diverged = true;
    CHECK(ft::best_grid_point({diverged, point(1e-4, 0.34, 1.09)}) == 1);

    // Fashion-MNIST (three classes, 240 training images of which 48 val) where installed: val top-1 tells the rates
    // apart; else the colour folder, where both rates may score 1 on val and the tie rule (val loss) decides.
    testutil::TempDir dir("finetune_grid");
    const bool fmnist = !data::fashion_mnist_dir().empty();
    ft::Downstream task;
    if (fmnist) {
      ft::DownstreamOptions o;
      o.data = o.test_data = "fashion-mnist";
      o.classes = "Trouser,Bag,Sneaker";
      o.limit = 240;
      o.limit_test = 60;
      task = ft::open_downstream(o);
    } else {
      MESSAGE("Fashion-MNIST is not installed: the grid runs on the colour folder");
      write_folder(dir.file("data"), {"a", "b", "c"}, 16, 16);
      task = folder_task(dir.file("data"));
    }
    ft::ProtocolOptions po;
    po.lrs = {1e-6, 5e-2};  // 1e-6 cannot move a head initialised at 2e-5 in 20 steps; 5e-2 learns
    po.seeds = 2;
    po.run = quick(0, 0, 20);
    ft::ProtocolResult r = ft::run_protocol(tiny_vit(3), task, po);
    REQUIRE(r.grid.size() == 2);
    CHECK(r.grid[0].val.eval_loss == doctest::Approx(std::log(3.0)).epsilon(0.01));  // untrained: uniform logits
    CHECK(r.grid[1].val.eval_loss < 0.9 * std::log(3.0));
    if (fmnist) CHECK(r.grid[1].val.top1 > r.grid[0].val.top1 + 0.3);
    CHECK(r.chosen_lr == 5e-2);
    // Each grid entry is the seed-0 run on train minus val, scored on val: the same as calling it directly.
    ft::RunResult direct = ft::finetune_once(tiny_vit(3), task.train_part, task.val, 3, quick(5e-2, 0, 20));
    CHECK(direct.top1 == r.grid[1].val.top1);
    CHECK(direct.losses == r.grid[1].val.losses);
    REQUIRE(r.tests.size() == 2);
    ft::RunResult seed1 = ft::finetune_once(tiny_vit(3), task.train, task.test, 3, quick(5e-2, 1, 20));
    CHECK(seed1.top1 == r.tests[1].top1);
    const double mean = (r.tests[0].top1 + r.tests[1].top1) / 2;
    const double sd = std::sqrt((std::pow(r.tests[0].top1 - mean, 2) + std::pow(r.tests[1].top1 - mean, 2)) / 1.0);
    CHECK(r.mean_top1 == doctest::Approx(mean).epsilon(1e-12));
    CHECK(r.std_top1 == doctest::Approx(sd).epsilon(1e-12));
  }

  TEST_CASE("moce finetune and moce linprobe end to end: finetune.json, the loss curves, linprobe.json") {
    auto& fx = moce_fixture();
    testutil::TempDir dir("finetune_cmd");
    write_folder(dir.file("data"), {"dark", "red", "blue"}, 16, 16);
    const std::string out = dir.file("ft");
    REQUIRE(run(moce::cmd_finetune, "finetune",
                {"--model", fx.init(), "--data", dir.file("data"), "--lrs", "1e-3,3e-2", "--seeds", "2", "--steps", "6",
                 "--batch", "16", "--workers", "1", "--out", out}) == 0);
    json j = json::parse(read_text(out + "/finetune.json"));
    CHECK(j["format"] == "moce-finetune");
    CHECK(j["model_kind"] == "mae");
    REQUIRE(j["grid"].size() == 2);
    CHECK(j["grid"][0]["lr"] == 1e-3);
    CHECK(j["steps"] == 6);
    const size_t best = j["grid"][0]["val_top1"].get<double>() >= j["grid"][1]["val_top1"].get<double>() ? 0 : 1;
    if (j["grid"][0]["val_top1"] != j["grid"][1]["val_top1"]) CHECK(j["chosen_lr"] == j["grid"][best]["lr"]);
    REQUIRE(j["tests"].size() == 2);
    const double t0 = j["tests"][0]["test_top1"], t1 = j["tests"][1]["test_top1"];
    CHECK(j["test_top1_mean"].get<double>() == doctest::Approx((t0 + t1) / 2));
    CHECK(j["test_top1_std"].get<double>() == doctest::Approx(std::fabs(t0 - t1) / std::sqrt(2.0)));
    CHECK(j["train_images"] == 38);  // 48 images, round(48 x 0.2) = 10 carved as test
    data::Image png = data::decode_image(out + "/loss_curves.png");
    CHECK(png.width == 800);
    CHECK(png.height == 500);

    const std::string probe = dir.file("probe");
    for (const char* pool : {"token", "avg"}) {
      CAPTURE(pool);
      REQUIRE(run(moce::cmd_linprobe, "linprobe",
                  {"--model", fx.init(), "--data", dir.file("data"), "--pool", pool, "--epochs", "30", "--workers", "1",
                   "--out", probe}) == 0);
      json p = json::parse(read_text(probe + "/linprobe.json"));
      CHECK(p["pool"] == pool);
      CHECK(p["feature_dim"] == 16);
      // Colour classes: the probe on standardised features separates them well above chance (1/3).
      CHECK(p["test_top1"].get<double>() > 0.6);
    }
  }

  TEST_CASE("loss-curve PNG: PlotText adds the title, the axis titles and a legend in each series' colour") {
    testutil::TempDir dir("finetune_plot");
    moce::Series a, b;
    a.x = b.x = {1, 2, 3};
    a.y = {1.0, 0.8, 0.5};
    b.y = {1.1, 0.9, 0.7};
    moce::series_colour(1, b);  // orange (255, 127, 14)
    b.label = "LR 0.1";
    const std::string plain = dir.file("plain.png"), titled = dir.file("titled.png");
    moce::write_line_plot(plain, {a, b}, 400, 300);
    moce::write_line_plot(titled, {a, b}, moce::PlotText{"TITLE", "STEP", "LOSS"}, 400, 300);
    data::Image p = data::decode_image(plain), t = data::decode_image(titled);
    REQUIRE(p.width == 400);
    REQUIRE(t.height == 300);
    auto dark_in = [](const data::Image& im, int x0, int x1, int y0, int y1) {
      int n = 0;
      for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
          const uint8_t* px = &im.pixels[(size_t(y) * size_t(im.width) + size_t(x)) * 3];
          n += px[0] == 60 && px[1] == 60 && px[2] == 60;  // the text colour
        }
      return n;
    };
    CHECK(dark_in(p, 100, 300, 0, 14) == 0);  // no title without PlotText
    CHECK(dark_in(t, 100, 300, 0, 18) > 20);  // "TITLE" centred on top
    CHECK(dark_in(t, 0, 40, 26, 40) > 10);    // "LOSS" above the y axis
    CHECK(dark_in(t, 150, 250, 300 - 34, 300 - 18) > 10);  // "STEP" under the x tick labels
    // The legend entry: the series' colour at the top right, where the plain chart has none of it.
    auto orange_in = [](const data::Image& im) {
      int n = 0;
      for (int y = 44; y < 62; y++)
        for (int x = 300; x < 380; x++) {
          const uint8_t* px = &im.pixels[(size_t(y) * size_t(im.width) + size_t(x)) * 3];
          n += px[0] == 255 && px[1] == 127 && px[2] == 14;
        }
      return n;
    };
    CHECK(orange_in(t) > 30);
    CHECK(orange_in(p) == 0);
  }

  TEST_CASE("bad input: one line naming the file or flag, or the stated handling") {
    testutil::TempDir dir("finetune_bad");
    // One class.
    write_folder(dir.file("one"), {"only"}, 8, 16);
    std::string e = error_of([&] { folder_task(dir.file("one")); });
    CHECK(has(e, dir.file("one")));
    CHECK(has(e, "1 class (only)"));
    // A test class that training lacks.
    write_folder(dir.file("train"), {"a", "b"}, 8, 16);
    write_folder(dir.file("test"), {"a", "zebra"}, 4, 16);
    ft::DownstreamOptions o;
    o.data = dir.file("train");
    o.test_data = dir.file("test");
    e = error_of([&] { ft::open_downstream(o); });
    CHECK(has(e, "test class 'zebra' is absent from the training data"));
    CHECK(has(e, dir.file("test")));
    // A test folder with a subset of training's classes is relabelled by name.
    write_folder(dir.file("test_b"), {"b"}, 4, 16);
    o.test_data = dir.file("test_b");
    ft::Downstream sub = ft::open_downstream(o);
    CHECK(sub.test->label(0) == 1);
    // Images of another size: resized (and said once) -- 20 px images train a 16 px model.
    write_folder(dir.file("big"), {"a", "b"}, 10, 20);
    ft::Downstream big = folder_task(dir.file("big"));
    CHECK(has(ft::resize_note(big, 16), "20x20"));
    CHECK(ft::resize_note(big, 20).empty());
    ft::RunResult r = ft::finetune_once(tiny_vit(1), big.train_part, big.val, 2, quick(1e-2, 0, 2));
    CHECK(r.losses.size() == 2);

    // Model files: missing, not a ViT, another shape, a MoE model, heads that do not divide.
    CHECK(has(error_of([&] { ft::load_encoder(dir.file("missing.safetensors")); }), "missing.safetensors"));
    const std::string not_vit = dir.file("centroids.safetensors");
    eng::save_safetensors(not_vit, {{"centroids", Tensor::zeros({4, 8})}});
    e = error_of([&] { ft::load_encoder(not_vit); });
    CHECK(has(e, not_vit));
    CHECK(has(e, "not a ViT"));
    model::VisionTransformer v = tiny_vit(0);
    std::map<std::string, Tensor> t = v.state_dict();
    const std::string bad_pos = dir.file("bad_pos.safetensors");
    auto t2 = t;
    t2["pos_embed"] = Tensor::zeros({1, 16, 32});  // 15 patches: no square grid
    eng::save_safetensors(bad_pos, t2);
    e = error_of([&] { ft::load_encoder(bad_pos, 2); });
    CHECK(has(e, bad_pos));
    CHECK(has(e, "pos_embed"));
    const std::string bad_block = dir.file("bad_block.safetensors");
    t2 = t;
    t2["blocks.1.attn.qkv.weight"] = Tensor::zeros({96, 16});
    eng::save_safetensors(bad_block, t2);
    e = error_of([&] { ft::load_encoder(bad_block, 2); });
    CHECK(has(e, bad_block));
    CHECK(has(e, "blocks.1.attn.qkv.weight"));
    const std::string good = dir.file("good.safetensors");
    eng::save_safetensors(good, t);
    CHECK(has(error_of([&] { ft::load_encoder(good, 5); }), "--heads 5 does not divide embed_dim 32"));
    CHECK(has(error_of([&] { ft::load_encoder(good); }), "pass --heads"));  // 32 is not a multiple of 64
    CHECK(ft::load_encoder(good, 4).vit.config().num_heads == 4);
    const std::string moe = dir.file("moe.safetensors");
    t2 = t;
    t2["blocks.1.mlp.gate.weight"] = Tensor::zeros({8, 32});
    eng::save_safetensors(moe, t2);
    CHECK(has(error_of([&] { ft::load_encoder(moe, 2); }), "moce export"));
    // An MAE file whose tensor has another shape than its config says.
    auto& fx = moce_fixture();
    eng::SafetensorsFile mf = eng::load_safetensors(fx.init());
    mf.tensors["blocks.0.norm1.weight"] = Tensor::zeros({7});
    const std::string bad_mae = dir.file("bad_mae.safetensors");
    eng::save_safetensors(bad_mae, mf.tensors, mf.metadata);
    CHECK(has(error_of([&] { ft::load_encoder(bad_mae); }), bad_mae));
    // Token pooling needs a final norm; an avg-pooled timm file has fc_norm instead.
    model::VitConfig ac = v.config();
    ac.pool = model::VitPool::Avg;
    model::VisionTransformer avg_vit(ac, 0);
    CHECK(has(error_of([&] { ft::classifier_from_encoder(avg_vit, 0, model::VitPool::Token, 0, "x.safetensors"); }),
              "x.safetensors: token pooling needs the encoder's final norm"));

    // The lr grid and the steps.
    CHECK(has(error_of([] { ft::parse_lr_grid("1e-3,0"); }), "--lrs '1e-3,0': learning rate 0 must be positive"));
    CHECK(has(error_of([] { ft::parse_lr_grid("-1e-2"); }), "must be positive"));
    CHECK(has(error_of([] { ft::parse_lr_grid("1e-3,abc"); }), "'abc' is not a number"));
    CHECK(ft::parse_lr_grid("1e-4,3e-1") == std::vector<double>{1e-4, 3e-1});
    const std::string out = dir.file("out");
    e = error_of([&] {
      run(moce::cmd_finetune, "finetune", {"--model", good, "--heads", "2", "--data", dir.file("train"), "--steps", "0",
                                           "--out", out});
    });
    CHECK(has(e, "--steps 0 must be positive"));
    e = error_of([&] {
      run(moce::cmd_finetune, "finetune", {"--model", good, "--heads", "2", "--data", dir.file("train"), "--lrs", "0",
                                           "--out", out});
    });
    CHECK(has(e, "--lrs '0'"));
    e = error_of([&] {
      run(moce::cmd_finetune, "finetune", {"--model", good, "--data", dir.file("one"), "--heads", "2", "--out", out});
    });
    CHECK(has(e, "1 class"));
    CHECK(!std::filesystem::exists(out));  // every check came before the output folder
    CHECK(has(error_of([&] {
                run(moce::cmd_linprobe, "linprobe", {"--model", good, "--heads", "2", "--data", dir.file("train"),
                                                     "--pool", "cls", "--out", out});
              }),
              "--pool 'cls'"));
  }
}
