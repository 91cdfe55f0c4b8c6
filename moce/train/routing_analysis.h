// routing_analysis.h: `moce routing`'s library: runs a model `moce train` wrote over a labelled data set (all
// patches, no masking, evaluation mode: no gate noise) and counts where each expert layer sends each image: one count
// per image and choice for MoCE (its cluster's centroid, by the deployment rule of MoceRouter), one per token and
// choice for TokenMoE; and per layer the mean gate value of each expert over those units (RoutingLayer::gate_mean, the
// scale an exported expert drops, moce/export). The counts go to moce/eval/routing_report.h, which writes the heatmaps, strips and JSON.
#pragma once
#include <memory>
#include <string>

#include "data/dataset.h"
#include "moce/eval/routing_report.h"
#include "moce/train/expert_training.h"

namespace moce {

struct RoutingOptions {
  std::string features_checkpoint;  // MoCE: the dense MAE that routes an image to its cluster ("" = the run's --init)
  int64_t batch = 128;
  int workers = 2;
  int64_t strip_images = 16, heatmap_rows = 200;
  bool verbose = true;  // a progress line per 20 batches
};

// The counts of every expert layer of `model` over `ds` (in data-set order), ready for write_routing_report; with
// MoCE also each image's cluster (clusters_out, optional). Throws naming the file for a dense model (no experts).
RoutingInput collect_routing(TrainedModel& model, std::shared_ptr<const data::Dataset> ds, const RoutingOptions& o,
                             eng::Device device, std::vector<int32_t>* clusters_out = nullptr);

}  // namespace moce
