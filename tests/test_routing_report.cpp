// test_routing_report.cpp: the routing analysis (moce/eval/routing_report.h) against brute force on hand-made count
// matrices: shares, NMI, majority and load figures, the row order, the PNGs and routing.json, and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "data/dataset.h"
#include "data/image.h"
#include "engine/rng.h"
#include "moce/eval/routing_report.h"
#include "tests/test_util.h"

using eng::Tensor;
using moce::LayerRouting;
using moce::RoutingLayer;

namespace {

// NMI by its definition, in f64 over the contingency table (arithmetic-mean normaliser), written independently of
// common/label_stats.cpp.
double brute_nmi(const std::vector<int32_t>& a, const std::vector<int64_t>& b) {
  const double n = double(a.size());
  std::map<int64_t, double> pa, pb;
  std::map<std::pair<int64_t, int64_t>, double> pab;
  for (size_t i = 0; i < a.size(); i++) pa[a[i]] += 1 / n, pb[b[i]] += 1 / n, pab[{a[i], b[i]}] += 1 / n;
  double mi = 0, ha = 0, hb = 0;
  for (auto& [k, p] : pab) mi += p * std::log(p / (pa[k.first] * pb[k.second]));
  for (auto& [k, p] : pa) ha -= p * std::log(p);
  for (auto& [k, p] : pb) hb -= p * std::log(p);
  return ha + hb == 0 ? 1.0 : mi / ((ha + hb) / 2);
}

// A layer whose image i sends all its `tokens` choices to experts[i].
RoutingLayer one_expert_per_image(const std::vector<int64_t>& experts, int64_t num_experts, int64_t tokens = 1) {
  RoutingLayer l;
  l.block = 3;
  l.num_experts = num_experts;
  l.counts.assign(experts.size() * size_t(num_experts), 0);
  for (size_t i = 0; i < experts.size(); i++) l.counts[i * size_t(num_experts) + size_t(experts[i])] = tokens;
  return l;
}

}  // namespace

TEST_SUITE("routing report") {
  TEST_CASE("random token counts: shares, image -> expert, NMI, majority, top-expert shares and loads by brute force") {
    const int64_t n = 60, E = 5, C = 4, T = 16;
    eng::Generator g(7);
    std::vector<double> u = g.uniform({n * (E + 1)}, 0.0, 1.0, eng::DType::F64).to_vector<double>();
    RoutingLayer layer;
    layer.block = 11;
    layer.num_experts = E;
    std::vector<int64_t> labels(n);
    for (int64_t i = 0; i < n; i++) {
      labels[size_t(i)] = int64_t(u[size_t(i * (E + 1))] * C);
      // T tokens over the experts, skewed towards expert label % E so that the classes differ.
      std::vector<int64_t> row(E, 0);
      for (int64_t t = 0; t < T; t++) {
        const double v = std::fmod(u[size_t(i * (E + 1) + 1 + t % E)] * double(t + 3), 1.0);
        row[size_t(v < 0.5 ? labels[size_t(i)] % E : int64_t(v * 2 * E) % E)]++;
      }
      layer.counts.insert(layer.counts.end(), row.begin(), row.end());
    }
    const LayerRouting r = moce::analyse_routing_layer(layer, labels, C);

    // Brute force: the sums, in f64, straight from the definitions.
    std::vector<std::vector<double>> cls(C, std::vector<double>(E, 0));
    std::vector<double> load(E, 0);
    std::vector<int32_t> img_expert;
    double all = 0;
    for (int64_t i = 0; i < n; i++) {
      int64_t best = 0;
      for (int64_t e = 0; e < E; e++) {
        const double c = double(layer.counts[size_t(i * E + e)]);
        cls[size_t(labels[size_t(i)])][size_t(e)] += c, load[size_t(e)] += c, all += c;
        if (layer.counts[size_t(i * E + e)] > layer.counts[size_t(i * E + best)]) best = e;
      }
      img_expert.push_back(int32_t(best));
    }
    CHECK(r.image_expert == img_expert);
    CHECK(r.nmi == doctest::Approx(brute_nmi(img_expert, labels)).epsilon(1e-12));
    std::vector<double> top_share(E, 0);
    int present = 0, majority = 0;
    for (int64_t c = 0; c < C; c++) {
      double total = 0;
      for (double v : cls[size_t(c)]) total += v;
      if (total == 0) continue;
      present++;
      int64_t top = 0;
      for (int64_t e = 0; e < E; e++) {
        CHECK(r.share[size_t(c)][size_t(e)] == doctest::Approx(cls[size_t(c)][size_t(e)] / total).epsilon(1e-14));
        if (cls[size_t(c)][size_t(e)] > cls[size_t(c)][size_t(top)]) top = e;
      }
      top_share[size_t(top)] += 1;
      if (cls[size_t(c)][size_t(top)] / total > 0.5) majority++;
    }
    REQUIRE(present == int(r.rows.size()));
    CHECK(r.majority_class_share == doctest::Approx(double(majority) / present));
    double h = 0;
    for (int64_t e = 0; e < E; e++) {
      CHECK(r.top_expert_class_share[size_t(e)] == doctest::Approx(top_share[size_t(e)] / present));
      CHECK(r.load[size_t(e)] == doctest::Approx(load[size_t(e)] / all).epsilon(1e-14));
      if (load[size_t(e)] > 0) h -= load[size_t(e)] / all * std::log(load[size_t(e)] / all);
    }
    CHECK(r.load_entropy_nats == doctest::Approx(h).epsilon(1e-12));
    CHECK(r.load_entropy_normalised == doctest::Approx(h / std::log(double(E))).epsilon(1e-12));
    // The figures are not degenerate: a test where every share is 0 or 1 would not tell much.
    CHECK(r.nmi > 0.01);
    CHECK(r.nmi < 0.99);
  }

  TEST_CASE("perfectly semantic routing: NMI 1, purity 1, every class a majority, each expert a quarter") {
    // Class c goes to expert (c + 1) % 4, all of its tokens (16 each): the unit does not change the figures.
    std::vector<int64_t> labels, experts;
    for (int64_t i = 0; i < 40; i++) labels.push_back(i % 4), experts.push_back((i % 4 + 1) % 4);
    for (int64_t tokens : {1, 16}) {
      const LayerRouting r = moce::analyse_routing_layer(one_expert_per_image(experts, 4, tokens), labels, 4);
      CHECK(r.nmi == doctest::Approx(1.0));
      CHECK(r.purity == doctest::Approx(1.0));
      CHECK(r.majority_class_share == 1.0);
      CHECK(r.busiest_expert_class_share == 0.25);
      CHECK(r.busiest_expert == 0);
      for (double l : r.load) CHECK(l == 0.25);
      CHECK(r.load_entropy_normalised == doctest::Approx(1.0));
      // Rows by top expert: expert 0 holds class 3, expert 1 class 0, ...
      std::vector<int64_t> order;
      for (const auto& cr : r.rows) order.push_back(cr.cls);
      CHECK(order == std::vector<int64_t>{3, 0, 1, 2});
    }
  }

  TEST_CASE("everything to one expert: the one-expert-takes-all figure is 100%, NMI 0, load entropy 0") {
    std::vector<int64_t> labels, experts;
    for (int64_t i = 0; i < 30; i++) labels.push_back(i % 3), experts.push_back(2);
    const LayerRouting r = moce::analyse_routing_layer(one_expert_per_image(experts, 4, 49), labels, 5);
    CHECK(r.busiest_expert == 2);
    CHECK(r.busiest_expert_class_share == 1.0);
    CHECK(r.majority_class_share == 1.0);
    CHECK(r.nmi == 0.0);
    CHECK(r.load == std::vector<double>{0, 0, 1, 0});
    CHECK(r.load_entropy_nats == 0.0);
    CHECK(r.absent_classes == std::vector<int64_t>{3, 4});  // classes 3 and 4 have no images
    CHECK(r.rows.size() == 3);
  }

  TEST_CASE("row order: by top expert, then its share descending, then class id; ties to the lowest expert") {
    // One image per class, 10 tokens each, over 3 experts.
    const std::vector<std::vector<int64_t>> rows = {
        {2, 8, 0},  // class 0: expert 1 at 0.8
        {6, 4, 0},  // class 1: expert 0 at 0.6
        {9, 1, 0},  // class 2: expert 0 at 0.9
        {0, 5, 5},  // class 3: a tie of 1 and 2 -> expert 1 at 0.5
        {1, 1, 8},  // class 4: expert 2 at 0.8
        {6, 4, 0},  // class 5: as class 1 -> after it by id
        {0, 9, 1},  // class 6: expert 1 at 0.9
    };
    RoutingLayer l;
    l.block = 0;
    l.num_experts = 3;
    std::vector<int64_t> labels;
    for (size_t c = 0; c < rows.size(); c++) {
      l.counts.insert(l.counts.end(), rows[c].begin(), rows[c].end());
      labels.push_back(int64_t(c));
    }
    const LayerRouting r = moce::analyse_routing_layer(l, labels, 7);
    std::vector<int64_t> order;
    for (const auto& cr : r.rows) order.push_back(cr.cls);
    CHECK(order == std::vector<int64_t>{2, 1, 5, 6, 0, 3, 4});
    CHECK(r.rows[5].top_expert == 1);
    CHECK(r.image_expert[3] == 1);  // the image's tie, too, goes to the lowest id
    // More than half, strictly: class 3 (0.5) is no majority; the other six are.
    CHECK(r.majority_class_share == doctest::Approx(6.0 / 7.0));
    CHECK(r.top_expert_class_share == std::vector<double>{3.0 / 7, 3.0 / 7, 1.0 / 7});
    CHECK(r.busiest_expert == 0);  // a tie of experts 0 and 1
  }

  TEST_CASE("files: the heatmap and the sample strips decode at the expected size, routing.json beside them") {
    testutil::TempDir dir("routing_report");
    const int64_t n = 24, E = 3, C = 4, side = 16;
    // Image i is a flat grey of level i / n: a tile's pixel tells which image it is.
    std::vector<float> px;
    std::vector<int64_t> label_values;
    for (int64_t i = 0; i < n; i++) {
      px.insert(px.end(), size_t(3 * side * side), float(i) / float(n));
      label_values.push_back(i % C);
    }
    data::TensorDataset ds(Tensor::from_vector(px, {n, 3, side, side}), Tensor::from_vector(label_values, {n}),
                           {"ant", "bee", "cat", "dog"});
    moce::RoutingInput in;
    in.gate = "tokenmoe";
    in.labels = label_values;
    in.class_names = ds.classes();
    in.dataset = &ds;
    in.strip_images = 5;
    // Layer 7: class c to expert c % 3 (classes 0 and 3 share expert 0); confidence rising with the index, so each
    // strip starts at its last image. Layer 9: all to expert 1, no confidence.
    std::vector<int64_t> experts, ones;
    for (int64_t i = 0; i < n; i++) experts.push_back((i % C) % E), ones.push_back(1);
    RoutingLayer a = one_expert_per_image(experts, E, 4), b = one_expert_per_image(ones, E, 4);
    a.block = 7, b.block = 9;
    for (int64_t i = 0; i < n; i++) a.confidence.push_back(double(i));
    in.layers = {a, b};
    const moce::RoutingReportFiles out = moce::write_routing_report(in, dir.path.string());
    CHECK(out.written.size() == 5);
    const nlohmann::json j = nlohmann::json::parse(std::ifstream(dir.file("routing.json")));
    CHECK(j == out.report);
    CHECK(j["format"] == "moce-routing-report");
    CHECK(j["counts_unit"] == "tokens");
    REQUIRE(j["layers"].size() == 2);
    CHECK(j["layers"][1]["busiest_expert_class_share"] == 1.0);
    CHECK(j["layers"][0]["rows"][0]["name"] == "ant");

    // The heatmap: 4 class rows x 3 experts; the share-1 cells (all of them in both layers) are dark blue, as is the
    // colour bar's last column of 10 pixels: nothing else is.
    for (int64_t block : {7, 9}) {
      const data::Image h = data::decode_image(dir.file("routing_heatmap_layer" + std::to_string(block) + ".png"));
      const auto& hj = j["layers"][block == 7 ? 0 : 1]["heatmap_png"];
      CHECK(h.width == hj["width"].get<int64_t>());
      CHECK(h.height == hj["height"].get<int64_t>());
      const int64_t cell_w = std::min<int64_t>(32, 640 / E), cell_h = std::min<int64_t>(16, 800 / C);
      int64_t dark = 0;
      for (size_t p = 0; p + 2 < h.pixels.size(); p += 3)
        dark += h.pixels[p] == 8 && h.pixels[p + 1] == 48 && h.pixels[p + 2] == 107;
      CHECK(dark == C * cell_w * cell_h + 10);
    }
    // The strips: a row per expert, 5 cells of 64 pixels (16 upscaled 4x), 2-pixel gaps, a 16-pixel title each.
    const data::Image s = data::decode_image(dir.file("expert_samples_layer7.png"));
    CHECK(s.width == 2 + 5 * 66);
    CHECK(s.height == 2 + E * (16 + 64 + 2));
    const auto& strips = j["layers"][0]["samples_png"]["images_per_expert"];
    CHECK(strips[0] == std::vector<int64_t>{23, 20, 19, 16, 15});  // classes 0 and 3, most confident first
    CHECK(strips[2] == std::vector<int64_t>{22, 18, 14, 10, 6});
    for (int64_t e = 0; e < E; e++)
      for (int64_t k = 0; k < 5; k++) {
        const int64_t img = strips[size_t(e)][size_t(k)].get<int64_t>();
        const int64_t x = 2 + k * 66 + 30, y = 2 + e * 82 + 16 + 30;
        CHECK(int(s.pixels[size_t((y * s.width + x) * 3)]) == int(std::lround(255.0 * double(float(img) / float(n)))));
      }
    const nlohmann::json& empty_strip = j["layers"][1]["samples_png"]["images_per_expert"][0];
    CHECK(empty_strip.empty());
  }

  TEST_CASE("bad input: one line naming what does not match") {
    using testutil::error_of;
    RoutingLayer l = one_expert_per_image({0, 1, 1}, 2);
    auto has = [](const std::string& msg, const std::string& part) {
      INFO(msg);
      return msg.find(part) != std::string::npos;
    };
    CHECK(has(error_of([&] { moce::analyse_routing_layer(l, {0, 1}, 2); }), "6 counts for 2 images x 2 experts"));
    CHECK(has(error_of([&] { moce::analyse_routing_layer(l, {0, 1, 2}, 2); }), "image 2 has label 2, outside [0, 2)"));
    RoutingLayer neg = l;
    neg.counts[1] = -1;
    CHECK(has(error_of([&] { moce::analyse_routing_layer(neg, {0, 1, 1}, 2); }), "image 0 has count -1 at expert 1"));
    RoutingLayer none = l;
    none.counts[0] = 0;
    CHECK(has(error_of([&] { moce::analyse_routing_layer(none, {0, 1, 1}, 2); }), "image 0 was routed nowhere"));
    RoutingLayer conf = l;
    conf.confidence = {1.0};
    CHECK(has(error_of([&] { moce::analyse_routing_layer(conf, {0, 1, 1}, 2); }), "1 confidences for 3 images"));

    testutil::TempDir dir("routing_report_bad");
    moce::RoutingInput in;
    in.labels = {0, 1, 1};
    in.class_names = {"a", "b"};
    in.layers = {l, l};
    CHECK(has(error_of([&] { moce::write_routing_report(in, dir.path.string()); }), "block 3 given twice"));
    in.layers = {l};
    CHECK(has(error_of([&] { moce::write_routing_report(in, dir.file("missing")); }), "is not a folder"));
    in.gate = "dense";
    CHECK(has(error_of([&] { moce::write_routing_report(in, dir.path.string()); }), "gate 'dense'"));
    in.gate = "moce";
    in.dataset_index = {0, 1};
    CHECK(has(error_of([&] { moce::write_routing_report(in, dir.path.string()); }), "2 data set indices for 3 images"));
    CHECK(std::filesystem::is_empty(dir.path));  // nothing written by any of them
  }
}
