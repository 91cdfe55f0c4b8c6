// search.h: MoCE's expert search for a downstream task (the paper's section 3.4): the downstream training images'
// features from the dense MAE the clustering used (pooled as the clusters were), each image assigned to the cluster of
// largest f·C; the cluster with the most downstream images wins, and its gate (evaluation mode: no noise) names the
// expert at every MoE layer: argmax_e (W_g · C_winner)_e, the expert the routed model sends that cluster's images to.
// Only the feature MAE runs over the data (not the MoE model): the search costs one feature pass.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "engine/tensor.h"
#include "moce/train/expert_training.h"

namespace moce::search {

struct SearchOptions {
  std::string features_checkpoint;  // the dense MAE of the clustering ("" = the MoCE run's --init)
  int64_t batch = 128;
  int workers = 2;
  eng::Device device = eng::Device::cpu();
};

struct SearchResult {
  std::string features_checkpoint, pool, data;
  int64_t images = 0;
  std::vector<int64_t> votes;   // [M]: downstream images whose feature is nearest (largest f·C) to each centroid
  int64_t cluster = -1;         // the winner: most votes, the lowest id on a tie
  std::vector<int64_t> blocks;  // the MoE blocks, in order
  std::vector<int64_t> experts; // the chosen expert of each, in block order
  std::vector<double> gates;    // its gate value G_e(C_winner) (the scale the routed model gives its output)
  double seconds = 0;           // features, votes and gates (the model files' loading included)
};

// Each MoE layer's expert for cluster `cluster` of a MoCE model: argmax of softmax(W_g · C_cluster) (no noise), and
// its gate value in `gates` (optional).
std::vector<int64_t> experts_of_cluster(const TrainedModel& model, int64_t cluster, std::vector<double>* gates = nullptr);

// The search over `ds` (the downstream training images; data_name is what search.json records). Throws a one-line
// error for a model that is not MoCE, an empty data set, a missing feature checkpoint, or one whose features do not
// match the centroids.
SearchResult search_experts(const TrainedModel& model, std::shared_ptr<const data::Dataset> ds,
                            const std::string& data_name, const SearchOptions& o);

// search.json's content (format "moce-search"): votes, their shares, the top clusters, the winner, the experts per
// block with their gate values, the seconds; model_file names the model searched.
nlohmann::json search_to_json(const SearchResult& r, const std::string& model_file);
// The printed report: the top `top` clusters with their votes and shares, the winner, the experts, the time.
std::string search_summary(const SearchResult& r, int64_t top = 5);

}  // namespace moce::search
