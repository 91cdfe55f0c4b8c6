// routing_report.cpp: class x expert shares, NMI, majority and load figures of routing counts; the heatmap, the
// sample strips and routing.json.
#include "moce/eval/routing_report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "engine/error.h"
#include "moce/common/image_grid.h"
#include "moce/common/label_stats.h"
#include "moce/common/plot.h"
#include "moce/common/run_folder.h"

namespace moce {

namespace {

// Index of the largest value, ties to the lowest index.
template <typename T>
int64_t argmax_lowest(const T* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return best;
}

void check_layer(const RoutingLayer& layer, const std::vector<int64_t>& labels, int64_t num_classes) {
  const std::string name = fmt::format("routing layer (block {})", layer.block);
  ENG_CHECK(layer.num_experts > 0, "{}: {} experts", name, layer.num_experts);
  const int64_t n = int64_t(labels.size());
  ENG_CHECK(n > 0, "{}: no images", name);
  ENG_CHECK(int64_t(layer.counts.size()) == n * layer.num_experts,
            "{}: {} counts for {} images x {} experts (labels and counts do not match)", name, layer.counts.size(), n,
            layer.num_experts);
  ENG_CHECK(layer.confidence.empty() || int64_t(layer.confidence.size()) == n, "{}: {} confidences for {} images", name,
            layer.confidence.size(), n);
  for (int64_t i = 0; i < n; i++) {
    ENG_CHECK(labels[size_t(i)] >= 0 && labels[size_t(i)] < num_classes, "{}: image {} has label {}, outside [0, {})",
              name, i, labels[size_t(i)], num_classes);
    int64_t total = 0;
    for (int64_t e = 0; e < layer.num_experts; e++) {
      const int64_t c = layer.counts[size_t(i * layer.num_experts + e)];
      ENG_CHECK(c >= 0, "{}: image {} has count {} at expert {}", name, i, c, e);
      total += c;
    }
    ENG_CHECK(total > 0, "{}: image {} was routed nowhere (its counts are all 0)", name, i);
  }
}

}  // namespace

LayerRouting analyse_routing_layer(const RoutingLayer& layer, const std::vector<int64_t>& labels, int64_t num_classes) {
  check_layer(layer, labels, num_classes);
  const int64_t n = int64_t(labels.size()), E = layer.num_experts;
  LayerRouting r;
  r.block = layer.block;
  r.num_experts = E;
  r.num_classes = num_classes;
  std::vector<std::vector<int64_t>> per_class(size_t(num_classes), std::vector<int64_t>(size_t(E), 0));
  std::vector<int64_t> expert_total(size_t(E), 0);
  r.image_expert.resize(size_t(n));
  for (int64_t i = 0; i < n; i++) {
    const int64_t* row = &layer.counts[size_t(i * E)];
    r.image_expert[size_t(i)] = int32_t(argmax_lowest(row, E));
    for (int64_t e = 0; e < E; e++) {
      per_class[size_t(labels[size_t(i)])][size_t(e)] += row[e];
      expert_total[size_t(e)] += row[e];
    }
  }
  r.nmi = nmi(r.image_expert, labels);
  r.purity = purity(r.image_expert, labels);

  r.share.assign(size_t(num_classes), std::vector<double>(size_t(E), 0.0));
  r.top_expert_class_share.assign(size_t(E), 0.0);
  int64_t majority = 0;
  for (int64_t c = 0; c < num_classes; c++) {
    const std::vector<int64_t>& pc = per_class[size_t(c)];
    const int64_t total = std::accumulate(pc.begin(), pc.end(), int64_t(0));
    if (total == 0) {
      r.absent_classes.push_back(c);
      continue;
    }
    for (int64_t e = 0; e < E; e++) r.share[size_t(c)][size_t(e)] = double(pc[size_t(e)]) / double(total);
    ClassRouting cr;
    cr.cls = c;
    cr.total = total;
    cr.top_expert = argmax_lowest(pc.data(), E);
    cr.top_share = r.share[size_t(c)][size_t(cr.top_expert)];
    if (2 * pc[size_t(cr.top_expert)] > total) majority++;  // strictly more than half, in integers
    r.top_expert_class_share[size_t(cr.top_expert)] += 1;
    r.rows.push_back(cr);
  }
  const double present = double(r.rows.size());
  for (double& s : r.top_expert_class_share) s /= present;
  r.majority_class_share = double(majority) / present;
  r.busiest_expert = argmax_lowest(r.top_expert_class_share.data(), E);
  r.busiest_expert_class_share = r.top_expert_class_share[size_t(r.busiest_expert)];
  std::stable_sort(r.rows.begin(), r.rows.end(), [](const ClassRouting& a, const ClassRouting& b) {
    if (a.top_expert != b.top_expert) return a.top_expert < b.top_expert;
    if (a.top_share != b.top_share) return a.top_share > b.top_share;
    return a.cls < b.cls;
  });

  const double all = double(std::accumulate(expert_total.begin(), expert_total.end(), int64_t(0)));
  for (int64_t e = 0; e < E; e++) r.load.push_back(double(expert_total[size_t(e)]) / all);
  r.load_entropy_nats = count_entropy(expert_total);
  r.load_entropy_normalised = E > 1 ? r.load_entropy_nats / std::log(double(E)) : 1.0;
  return r;
}

nlohmann::json routing_layer_json(const LayerRouting& r, const std::vector<std::string>& class_names) {
  auto name_of = [&](int64_t c) { return c < int64_t(class_names.size()) ? class_names[size_t(c)] : std::to_string(c); };
  nlohmann::json rows = nlohmann::json::array(), matrix = nlohmann::json::array();
  for (const ClassRouting& cr : r.rows) {
    rows.push_back({{"class", cr.cls}, {"name", name_of(cr.cls)}, {"top_expert", cr.top_expert},
                    {"top_share", cr.top_share}, {"counts", cr.total}});
    matrix.push_back(r.share[size_t(cr.cls)]);
  }
  return {{"block", r.block},
          {"experts", r.num_experts},
          {"classes_present", r.rows.size()},
          {"absent_classes", r.absent_classes},
          {"nmi", r.nmi},
          {"purity", r.purity},
          {"majority_class_share", r.majority_class_share},
          {"top_expert_class_share", r.top_expert_class_share},
          {"busiest_expert", r.busiest_expert},
          {"busiest_expert_class_share", r.busiest_expert_class_share},
          {"expert_load", r.load},
          {"load_entropy_nats", r.load_entropy_nats},
          {"load_entropy_normalised", r.load_entropy_normalised},
          {"rows", rows},
          {"share_matrix", matrix}};
}

RoutingReportFiles write_routing_report(const RoutingInput& in, const std::string& out_dir) {
  ENG_CHECK(in.gate == "moce" || in.gate == "tokenmoe", "routing report: gate '{}' is neither moce nor tokenmoe",
            in.gate);
  ENG_CHECK(!in.layers.empty(), "routing report: no MoE layers");
  ENG_CHECK(!in.class_names.empty(), "routing report: no class names (the labels need a data set with classes)");
  ENG_CHECK(std::filesystem::is_directory(out_dir), "routing report: {} is not a folder", out_dir);
  ENG_CHECK(in.strip_images > 0 && in.heatmap_rows > 0, "routing report: strip_images {} and heatmap_rows {} must be "
            "positive", in.strip_images, in.heatmap_rows);
  const int64_t n = int64_t(in.labels.size()), num_classes = int64_t(in.class_names.size());
  ENG_CHECK(in.dataset_index.empty() || int64_t(in.dataset_index.size()) == n,
            "routing report: {} data set indices for {} images", in.dataset_index.size(), n);
  auto index_of = [&](int64_t i) { return in.dataset_index.empty() ? i : in.dataset_index[size_t(i)]; };
  if (in.dataset)
    for (int64_t i = 0; i < n; i++)
      ENG_CHECK(index_of(i) >= 0 && index_of(i) < in.dataset->size(),
                "routing report: image {} is index {} of a data set of {} images", i, index_of(i), in.dataset->size());
  std::vector<int64_t> blocks;
  std::vector<LayerRouting> analysed;
  for (const RoutingLayer& layer : in.layers) {  // every check before the first file
    ENG_CHECK(layer.block >= 0, "routing report: a layer without its block index ({})", layer.block);
    ENG_CHECK(std::find(blocks.begin(), blocks.end(), layer.block) == blocks.end(),
              "routing report: block {} given twice", layer.block);
    blocks.push_back(layer.block);
    analysed.push_back(analyse_routing_layer(layer, in.labels, num_classes));
  }
  const int64_t tile = in.dataset ? in.dataset->get(index_of(0)).image.size(1) : 0;

  RoutingReportFiles out;
  const std::filesystem::path dir(out_dir);
  const std::string unit = in.gate == "moce" ? "images" : "tokens";
  out.report = {{"format", "moce-routing-report"}, {"gate", in.gate}, {"counts_unit", unit},
                {"images", n},                     {"classes", num_classes}, {"layers", nlohmann::json::array()}};
  for (size_t l = 0; l < analysed.size(); l++) {
    const LayerRouting& r = analysed[l];
    nlohmann::json j = routing_layer_json(r, in.class_names);
    // The heatmap: at most heatmap_rows classes, spread evenly over the sorted order so that every expert's block
    // keeps its place.
    const int64_t present = int64_t(r.rows.size()), shown = std::min(present, in.heatmap_rows);
    std::vector<double> values;
    std::vector<std::string> row_labels, col_labels;
    std::vector<int64_t> shown_classes;
    for (int64_t k = 0; k < shown; k++) {
      const ClassRouting& cr = r.rows[size_t(k * present / shown)];
      shown_classes.push_back(cr.cls);
      row_labels.push_back(in.class_names[size_t(cr.cls)]);
      values.insert(values.end(), r.share[size_t(cr.cls)].begin(), r.share[size_t(cr.cls)].end());
    }
    for (int64_t e = 0; e < r.num_experts; e++) col_labels.push_back(std::to_string(e));
    const std::string heatmap = fmt::format("routing_heatmap_layer{}.png", r.block);
    auto [hw, hh] = write_heatmap_png((dir / heatmap).string(), values, shown, r.num_experts, row_labels, col_labels,
                                      fmt::format("BLOCK {} {} SHARE: CLASS X EXPERT", r.block, in.gate == "moce" ? "IMAGE" : "TOKEN"));
    out.written.push_back((dir / heatmap).string());
    j["heatmap_png"] = {{"file", heatmap}, {"width", hw}, {"height", hh}, {"classes", shown_classes}};

    if (in.dataset) {
      const RoutingLayer& layer = in.layers[l];
      std::vector<std::vector<int64_t>> members(size_t(r.num_experts));
      for (int64_t i = 0; i < n; i++) members[size_t(r.image_expert[size_t(i)])].push_back(i);
      std::vector<TitledRow> grid(size_t(r.num_experts));
      nlohmann::json strip = nlohmann::json::array();
      for (int64_t e = 0; e < r.num_experts; e++) {
        std::vector<int64_t>& m = members[size_t(e)];
        // Most confident first when a confidence is given, else the image's share of its counts at e; ties by image.
        auto score = [&](int64_t i) {
          if (!layer.confidence.empty()) return layer.confidence[size_t(i)];
          const int64_t* row = &layer.counts[size_t(i * r.num_experts)];
          const int64_t total = std::accumulate(row, row + r.num_experts, int64_t(0));
          return double(row[e]) / double(total);
        };
        std::stable_sort(m.begin(), m.end(), [&](int64_t a, int64_t b) { return score(a) > score(b); });
        grid[size_t(e)].title = fmt::format("EXPERT {}  LOAD {:.1f}%  IMAGES {}", e, 100.0 * r.load[size_t(e)], m.size());
        std::vector<int64_t> picked;
        for (int64_t k = 0; k < std::min<int64_t>(in.strip_images, int64_t(m.size())); k++) {
          picked.push_back(index_of(m[size_t(k)]));
          grid[size_t(e)].tiles.push_back(dataset_tile(*in.dataset, picked.back(), tile));
        }
        strip.push_back(picked);
      }
      const std::string samples = fmt::format("expert_samples_layer{}.png", r.block);
      auto [sw, sh] = write_titled_grid_png((dir / samples).string(), grid, tile, in.strip_images);
      out.written.push_back((dir / samples).string());
      j["samples_png"] = {{"file", samples}, {"width", sw}, {"height", sh}, {"images_per_expert", strip}};
    }
    out.report["layers"].push_back(j);
  }
  const std::string json_path = (dir / "routing.json").string();
  write_json_file(json_path, out.report);
  out.written.push_back(json_path);
  return out;
}

}  // namespace moce
