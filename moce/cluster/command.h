// moce/cluster/command.h: `moce cluster` as one library call: the feature bank (extracted from an MAE or reused),
// the centroids (learned by the paper's Sinkhorn optimisation, or Lloyd's k-means as its peer), the assignment, and the
// run folder (bank, centroids, assignments, clusters.json, cluster_samples.png), with every check done before anything
// is written.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "engine/tensor.h"
#include "model/mae.h"
#include "moce/cluster/centroids.h"

namespace moce::cluster {

struct ClusterOptions {
  std::string checkpoint;  // --checkpoint: the MAE whose encoder makes the features (not needed with --bank)
  std::string data;        // --data: an image folder, fashion-mnist or cifar10-bin:DIR (labels, the sample grid)
  std::string out;         // --out: the run folder
  std::string bank;        // --bank: a bank file to reuse instead of extracting
  std::string centroids;   // --centroids: assign with these centroids instead of learning them
  std::string pool = "mean";        // mean | cls
  std::string bank_dtype = "f32";   // f32 | bf16
  ClusterConfig cluster;            // M, epochs, batch, eps, Sinkhorn iterations, tau, SGD, init, seed, final assignment
  std::string algorithm = "sinkhorn";  // sinkhorn (the paper's) | kmeans (Lloyd, kmeans.h: the peer on the same bank)
  int kmeans_iterations = 50;       // --kmeans-iters: Lloyd's iteration limit
  std::string groups;               // --groups: a TSV of class -> group (groups.h); clusters.json then scores both
  std::string groups_column = "split";  // --groups-column: the column of --groups that names the group
  bool clusters_from_centroids = false;  // --centroids without --clusters: M is the file's
  int64_t limit = 0;                // the first N images of --data (0 = all)
  int64_t extract_batch = 256;
  int workers = 2;
  int64_t grid_clusters = 8, grid_images = 16;  // cluster_samples.png: rows (clusters) and images per row; 0 = none
  bool force = false;               // overwrite a folder that holds another run
  eng::Device device = eng::Device::cpu();
  // The MAE of a checkpoint file, on the CPU (the command passes moce::load_mae; cluster/ does not include train/).
  std::function<model::MaskedAutoencoder(const std::string& checkpoint)> load_model;
  // One progress line; empty: printed to stdout.
  std::function<void(const std::string&)> print;
};

struct ClusterCommandResult {
  nlohmann::json report;                     // what clusters.json holds
  std::map<std::string, std::string> files;  // what -> path of every file written
};

// Checks the flags' values (one line naming the flag); run_cluster_command calls it first.
void validate_cluster_options(const ClusterOptions& opt);

// Refuses an --out that holds another run (one line naming the folder): a folder that is absent, empty, or holds a
// cluster run of the same config when a bank is reused (opt.bank) may be used; with opt.force, any folder.
void check_cluster_out_folder(const ClusterOptions& opt);

// The whole command. Errors are one line naming the file or flag and come before anything is written.
ClusterCommandResult run_cluster_command(const ClusterOptions& opt);

// The sample grid (the paper's Figure 3b): rows for `rows` clusters spread over the ids (k * M / rows), each with a
// title strip (cluster id, size, majority label and its share, or EMPTY) and up to `per_row` of its members spread over
// its bank order, each resized to tile x tile and upscaled to at least 64 pixels. [width, height] of the PNG written.
std::pair<int64_t, int64_t> write_cluster_samples_png(const std::string& path, const FeatureBank& bank,
                                                      const std::vector<int32_t>& assign, int64_t clusters,
                                                      const data::Dataset& ds, int64_t tile, int64_t rows,
                                                      int64_t per_row);

}  // namespace moce::cluster
