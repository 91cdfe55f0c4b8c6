// moce/cluster/io.h: the files of stage one: the feature bank (safetensors, read in place by mmap), centroids,
// assignments and clusters.json; and the lookups the later stages use (cluster of a bank image, of a new feature).
//
// Bank file "<name>.safetensors": tensors "features" (F32 or BF16 [n, d]) and "image_index" (I64 [n]); metadata
// format = "moce-feature-bank", checkpoint (the feature checkpoint's identity), pool, n, d, paths_file. The paths,
// which would make the JSON header too large at ImageNet scale (1.28M paths), are a sidecar text file
// "<name>.safetensors.paths" with one path per line in row order (a path holding a newline is refused).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"
#include "moce/cluster/assign.h"
#include "moce/cluster/centroids.h"
#include "moce/cluster/stats.h"

namespace moce::cluster {

// The identity of a checkpoint file, stored with the features and centroids it made: "<file name> bytes=<size>
// crc32=<8 hex digits>" (zlib's CRC-32 of the whole file, read in 1 MiB pieces).
std::string file_identity(const std::string& path);

inline std::string bank_paths_file(const std::string& bank_path) { return bank_path + ".paths"; }

// Writes the bank (atomically: the paths file first, then the tensors; each through eng::io::AtomicFile) without
// a second copy of the features in memory.
void write_bank(const std::string& path, const FeatureBank& bank);

// Reads a bank written by write_bank. in_place: the file is mapped read-only and the features are read from the
// mapping (nothing copied; the OS pages them in as the clustering streams over them); otherwise they are read into
// memory. Errors name the file.
FeatureBank read_bank(const std::string& path, bool in_place = true);

// ---- outputs --------------------------------------------------------------------------------------------------

// What one clustering run produced: learned centroids, the whole-bank assignment, and the epochs.
struct ClusterRun {
  CentroidResult centroids;
  Assignment assignment;
};

// Stage one as one call: checks the bank, learns C (train_centroids), assigns the whole bank (assign_balanced).
ClusterRun run_clustering(const FeatureBank& bank, const ClusterConfig& cfg, eng::Device device = eng::Device::cpu(),
                          const EpochCallback& on_epoch = {});

// centroids.safetensors: "centroids" F32 [M, d]; metadata format, config (JSON), checkpoint.
void write_centroids(const std::string& path, const eng::Tensor& centroids, const ClusterConfig& cfg,
                     const std::string& checkpoint_identity);

struct CentroidsFile {
  eng::Tensor centroids;  // F32 [M, d]
  nlohmann::json config;
  std::string checkpoint_identity;
};
CentroidsFile read_centroids(const std::string& path);

// assignments.safetensors: "cluster" I32 [n] (balanced), "cluster_argmax" I32 [n] (plain argmax of A), "image_index"
// I64 [n]; metadata format, clusters, checkpoint.
void write_assignments(const std::string& path, const FeatureBank& bank, const Assignment& a, int64_t clusters);

// The cluster of a bank image by its data-set index (what the MoCE gate reads), from assignments.safetensors.
class ClusterLookup {
 public:
  explicit ClusterLookup(const std::string& assignments_path);
  int64_t clusters() const { return clusters_; }
  int64_t size() const { return int64_t(by_index_.size()); }
  // Throws naming the file when the image is not in the bank.
  int32_t cluster_of_image(int64_t image_index) const {
    auto it = by_index_.find(image_index);
    ENG_CHECK(it != by_index_.end(), "{}: image {} is not in the clustered bank", path_, image_index);
    return it->second;
  }

 private:
  std::string path_;
  int64_t clusters_ = 0;
  std::map<int64_t, int32_t> by_index_;
};

// clusters.json: the config, the checkpoint, the epochs, the final Sinkhorn's convergence, and the summaries of the
// balanced and the plain-argmax assignments (sizes, min/median/max, empty clusters, size entropy; with labels, one
// per bank row, purity and NMI).
nlohmann::json clusters_report(const FeatureBank& bank, const ClusterConfig& cfg, const ClusterRun& run,
                               const std::vector<int64_t>* labels = nullptr);

// Writes centroids.safetensors, assignments.safetensors and clusters.json into `dir` (which must exist).
void write_cluster_outputs(const std::string& dir, const FeatureBank& bank, const ClusterConfig& cfg,
                           const ClusterRun& run, const std::vector<int64_t>* labels = nullptr);

}  // namespace moce::cluster
