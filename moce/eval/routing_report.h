// moce/eval/routing_report.h: where an expert layer sends the images of each class (the paper's Figure 3 and its
// claim that MoCE's routing follows semantics while TokenMoE's does not: "one TokenMoE expert took 91.8% of
// classes"), from routing counts alone, so that it serves any gate.
//
// Input per MoE layer: counts[image][expert], the routing choices of each image that went to each expert (1 per
// image for MoCE top-1; the image's tokens, every one of its K choices, for TokenMoE), with the images' labels.
// Per layer:
//   share[c][e]          counts of class c's images summed per expert, each row normalised to 1;
//   row order            by each class's top expert (ties: lowest id), then its share there descending, then class
//                        id: the heatmap's rows, which then fall into blocks along the diagonal when routing follows
//                        classes;
//   image -> expert      each image's majority expert (ties: lowest id); NMI and purity of it against the labels;
//   majority_class_share the share of classes whose counts go more than half to one expert;
//   top_expert_class_share[e]  the share of classes whose top expert is e (its max is the "one expert took X% of
//                        classes" figure);
//   load[e]              expert e's share of all counts, and the entropy of the load.
// Classes without images are left out of every class figure (and listed).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"

namespace moce {

struct RoutingLayer {
  int64_t block = -1;           // the encoder block it replaces the MLP of (names the files), >= 0
  int64_t num_experts = 0;
  std::vector<int64_t> counts;  // [images * num_experts], row-major, >= 0, every image's row summing to > 0
  std::vector<double> confidence;  // optional [images]: orders each expert's sample strip (most confident first)
  std::vector<double> gate_mean;   // optional [num_experts]: the mean over units of G_{u,e} (before top-K)
};

struct RoutingInput {
  std::string gate = "moce";  // "moce" or "tokenmoe": what the counts count (images or tokens), for the report
  std::vector<RoutingLayer> layers;
  std::vector<int64_t> labels;           // [images], in [0, class_names.size())
  std::vector<std::string> class_names;  // one per class
  // Optional, for the sample strips: the data set and the index in it of each image (empty: image i is index i).
  const data::Dataset* dataset = nullptr;
  std::vector<int64_t> dataset_index;
  int64_t strip_images = 16;   // images per expert in the strip
  int64_t heatmap_rows = 200;  // at most this many classes in the heatmap (spread evenly over the sorted order)
};

struct ClassRouting {
  int64_t cls = 0;
  int64_t top_expert = 0;
  double top_share = 0;
  int64_t total = 0;  // counts of the class's images
};

struct LayerRouting {
  int64_t block = -1, num_experts = 0, num_classes = 0;
  std::vector<std::vector<double>> share;  // [num_classes][num_experts], class order (rows of absent classes are 0)
  std::vector<ClassRouting> rows;          // the present classes in the sorted (heatmap) order
  std::vector<int64_t> absent_classes;
  std::vector<int32_t> image_expert;       // [images]: majority expert
  double nmi = 0, purity = 0;
  double majority_class_share = 0;
  std::vector<double> top_expert_class_share;  // [num_experts]
  int64_t busiest_expert = 0;                  // argmax of top_expert_class_share (ties: lowest id)
  double busiest_expert_class_share = 0;
  std::vector<double> load;  // [num_experts]
  double load_entropy_nats = 0, load_entropy_normalised = 0;
};

// The figures of one layer. Throws naming the layer for counts that do not match the labels or the experts, a
// negative count, an image with no counts, or a label out of range.
LayerRouting analyse_routing_layer(const RoutingLayer& layer, const std::vector<int64_t>& labels, int64_t num_classes);

// The figures as JSON (what routing.json holds per layer): shares in the sorted row order with the class names.
nlohmann::json routing_layer_json(const LayerRouting& r, const std::vector<std::string>& class_names);

struct RoutingReportFiles {
  nlohmann::json report;             // what routing.json holds
  std::vector<std::string> written;  // every file written, the JSON last
};

// Analyses every layer and writes into out_dir (which must exist): routing_heatmap_layer<block>.png (classes as rows,
// experts as columns), expert_samples_layer<block>.png when a data set is given (a row per expert of up to
// strip_images images whose majority expert it is, most confident first, titled with the expert id, its load and
// its images), and routing.json beside them (format moce-routing-report). Every check comes before the first file.
RoutingReportFiles write_routing_report(const RoutingInput& input, const std::string& out_dir);

}  // namespace moce
