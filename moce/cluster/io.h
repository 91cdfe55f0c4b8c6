// moce/cluster/io.h: the files of stage one: the feature bank (safetensors, read in place by mmap), centroids,
// assignments and clusters.json; and the lookups the later stages use (cluster of a bank image, of a new feature).
//
// Bank file "<name>.safetensors": tensors "features" (F32 or BF16 [n, d]) and "image_index" (I64 [n]); metadata
// format = "moce-feature-bank", checkpoint (the feature checkpoint's identity), pool, n, d, paths_file. The paths,
// which would make the JSON header too large at ImageNet scale (1.28M paths), are a sidecar text file
// "<name>.safetensors.paths" with one path per line in row order (a path holding a newline is refused).
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"
#include "moce/cluster/assign.h"
#include "moce/cluster/centroids.h"
#include "moce/cluster/stats.h"

namespace moce::cluster {

// The identity of a checkpoint file, stored with the features and centroids it made: "<file name> bytes=<size>
// crc32=<8 hex digits>" (zlib's CRC-32 of the whole file, read in 1 MiB pieces).
inline std::string file_identity(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ENG_CHECK(in.good(), "{}: cannot open the file to identify it", path);
  std::vector<char> buf(size_t(1) << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  uint64_t total = 0;
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    const std::streamsize got = in.gcount();
    if (got <= 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), uInt(got));
    total += uint64_t(got);
  }
  return fmt::format("{} bytes={} crc32={:08x}", std::filesystem::path(path).filename().string(), total, uint32_t(crc));
}

inline std::string bank_paths_file(const std::string& bank_path) { return bank_path + ".paths"; }

// Writes the bank (atomically: the paths file first, then the tensors; each through eng::io::AtomicFile) without
// a second copy of the features in memory.
inline void write_bank(const std::string& path, const FeatureBank& bank) {
  bank.check();
  ENG_CHECK(bank.paths.empty() || int64_t(bank.paths.size()) == bank.n, "{}: {} paths for {} rows", path,
            bank.paths.size(), bank.n);
  {
    std::string text;
    for (const std::string& p : bank.paths) {
      ENG_CHECK(p.find('\n') == std::string::npos, "{}: the path '{}' holds a newline", path, p);
      text += p;
      text += '\n';
    }
    eng::io::write_file_atomic(bank_paths_file(path), text);
  }
  const size_t feat_bytes = size_t(bank.n) * size_t(bank.d) * eng::dtype_size(bank.dtype);
  const size_t index_bytes = size_t(bank.n) * sizeof(int64_t);
  nlohmann::json header;
  header["__metadata__"] = {{"format", "moce-feature-bank"}, {"checkpoint", bank.checkpoint_identity},
                            {"pool", bank.pool}, {"n", std::to_string(bank.n)}, {"d", std::to_string(bank.d)},
                            {"paths_file", std::filesystem::path(bank_paths_file(path)).filename().string()}};
  header["features"] = {{"dtype", eng::safetensors_dtype_name(bank.dtype)}, {"shape", {bank.n, bank.d}},
                        {"data_offsets", {0, feat_bytes}}};
  header["image_index"] = {{"dtype", "I64"}, {"shape", {bank.n}}, {"data_offsets", {feat_bytes, feat_bytes + index_bytes}}};
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h += ' ';  // the data starts 8-byte aligned
  const uint64_t hlen = h.size();
  std::vector<int64_t> index = bank.image_index;
  if (index.empty())
    for (int64_t i = 0; i < bank.n; i++) index.push_back(i);
  eng::io::AtomicFile f(path);
  f.write(&hlen, 8);
  f.write(h);
  f.write(bank.data, feat_bytes);
  f.write(index.data(), index_bytes);
  f.commit();
}

// Reads a bank written by write_bank. in_place: the file is mapped read-only and the features are read from the
// mapping (nothing copied; the OS pages them in as the clustering streams over them); otherwise they are read into
// memory. Errors name the file.
inline FeatureBank read_bank(const std::string& path, bool in_place = true) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ENG_CHECK(fd >= 0, "{}: cannot open the feature bank: {}", path, std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    ENG_FAIL("{}: cannot stat the feature bank: {}", path, std::strerror(errno));
  }
  const size_t size = size_t(st.st_size);
  void* map = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  ::close(fd);
  ENG_CHECK(map != MAP_FAILED, "{}: cannot map the feature bank ({} bytes): {}", path, size, std::strerror(errno));
  std::shared_ptr<const void> owner(map, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  const uint8_t* bytes = static_cast<const uint8_t*>(map);
  ENG_CHECK(size >= 8, "{}: not a safetensors file (only {} bytes)", path, size);
  uint64_t hlen;
  std::memcpy(&hlen, bytes, 8);
  ENG_CHECK(hlen <= eng::kSafetensorsMaxHeaderBytes && 8 + hlen <= size, "{}: not a safetensors file (header length {})",
            path, hlen);
  nlohmann::json header = nlohmann::json::parse(bytes + 8, bytes + 8 + hlen, nullptr, false);
  ENG_CHECK(header.is_object(), "{}: the safetensors header is not valid JSON", path);
  ENG_CHECK(header.contains("__metadata__") && header["__metadata__"].value("format", "") == "moce-feature-bank",
            "{}: not a feature bank (no metadata format = moce-feature-bank)", path);
  const size_t data_start = 8 + hlen;
  auto tensor_at = [&](const char* name, std::vector<int64_t>& shape, std::string& dtype) -> const uint8_t* {
    ENG_CHECK(header.contains(name) && header[name].is_object(), "{}: the feature bank has no tensor '{}'", path, name);
    const nlohmann::json& t = header[name];
    dtype = t.value("dtype", "");
    shape = t.value("shape", std::vector<int64_t>{});
    std::vector<uint64_t> off = t.value("data_offsets", std::vector<uint64_t>{});
    ENG_CHECK(off.size() == 2 && off[0] <= off[1] && data_start + off[1] <= size, "{}: tensor '{}' lies outside the file",
              path, name);
    size_t elem = dtype == "F32" ? 4 : dtype == "BF16" ? 2 : dtype == "I64" ? 8 : 0;
    ENG_CHECK(elem > 0, "{}: tensor '{}' has dtype {}, not one a bank uses", path, name, dtype);
    size_t count = 1;
    for (int64_t s : shape) count *= size_t(s);
    ENG_CHECK(count * elem == off[1] - off[0], "{}: tensor '{}' has {} bytes for shape {}", path, name, off[1] - off[0],
              eng::shape_str(shape));
    return bytes + data_start + off[0];
  };
  FeatureBank bank;
  bank.source = path;
  std::vector<int64_t> fshape, ishape;
  std::string fdt, idt;
  const uint8_t* feats = tensor_at("features", fshape, fdt);
  const uint8_t* index = tensor_at("image_index", ishape, idt);
  ENG_CHECK(fshape.size() == 2 && (fdt == "F32" || fdt == "BF16"), "{}: 'features' must be F32 or BF16 [n, d], got {} {}",
            path, fdt, eng::shape_str(fshape));
  ENG_CHECK(ishape.size() == 1 && ishape[0] == fshape[0] && idt == "I64", "{}: 'image_index' must be I64 [{}], got {} {}",
            path, fshape[0], idt, eng::shape_str(ishape));
  bank.n = fshape[0];
  bank.d = fshape[1];
  bank.dtype = fdt == "F32" ? eng::DType::F32 : eng::DType::BF16;
  ENG_CHECK(reinterpret_cast<uintptr_t>(feats) % eng::dtype_size(bank.dtype) == 0, "{}: 'features' is misaligned", path);
  bank.image_index.resize(size_t(bank.n));
  std::memcpy(bank.image_index.data(), index, size_t(bank.n) * 8);
  if (in_place) {
    bank.data = feats;
    bank.owner = owner;
  } else {
    eng::Tensor t = eng::Tensor::empty({bank.n, bank.d}, bank.dtype);
    std::memcpy(t.raw_data(), feats, t.nbytes());
    bank.data = t.raw_data();
    bank.owner = t.storage();
  }
  const nlohmann::json& meta = header["__metadata__"];
  bank.checkpoint_identity = meta.value("checkpoint", "");
  bank.pool = meta.value("pool", "mean");
  std::ifstream pf(bank_paths_file(path));
  ENG_CHECK(pf.good(), "{}: the paths file {} is missing", path, bank_paths_file(path));
  std::string line;
  while (std::getline(pf, line)) bank.paths.push_back(line);
  ENG_CHECK(bank.paths.empty() || int64_t(bank.paths.size()) == bank.n, "{}: the paths file has {} lines for {} rows",
            path, bank.paths.size(), bank.n);
  return bank;
}

// ---- outputs --------------------------------------------------------------------------------------------------

// What one clustering run produced: learned centroids, the whole-bank assignment, and the epochs.
struct ClusterRun {
  CentroidResult centroids;
  Assignment assignment;
};

// Stage one as one call: checks the bank, learns C (train_centroids), assigns the whole bank (assign_balanced).
inline ClusterRun run_clustering(const FeatureBank& bank, const ClusterConfig& cfg, eng::Device device = eng::Device::cpu(),
                                 const EpochCallback& on_epoch = {}) {
  check_bank_for_clusters(bank, cfg.clusters);
  bank.check();
  ClusterRun run;
  run.centroids = train_centroids(bank, cfg, device, on_epoch);
  AssignOptions opt;
  opt.eps = cfg.assign_eps;
  opt.tolerance = cfg.assign_tolerance;
  opt.max_iterations = cfg.assign_max_iterations;
  run.assignment = assign_balanced(bank, run.centroids.centroids, opt);
  return run;
}

// centroids.safetensors: "centroids" F32 [M, d]; metadata format, config (JSON), checkpoint.
inline void write_centroids(const std::string& path, const eng::Tensor& centroids, const ClusterConfig& cfg,
                            const std::string& checkpoint_identity) {
  std::vector<uint8_t> bytes = eng::serialize_safetensors(
      {{"centroids", centroids}},
      {{"format", "moce-centroids"}, {"config", config_to_json(cfg).dump()}, {"checkpoint", checkpoint_identity}}, path);
  eng::io::write_file_atomic(path, bytes.data(), bytes.size());
}

struct CentroidsFile {
  eng::Tensor centroids;  // F32 [M, d]
  nlohmann::json config;
  std::string checkpoint_identity;
};
inline CentroidsFile read_centroids(const std::string& path) {
  eng::SafetensorsFile f = eng::load_safetensors(path);
  ENG_CHECK(f.metadata.count("format") && f.metadata["format"] == "moce-centroids" && f.tensors.count("centroids"),
            "{}: not a centroids file (no metadata format = moce-centroids)", path);
  CentroidsFile out;
  out.centroids = f.tensors["centroids"].to(eng::DType::F32);
  ENG_CHECK(out.centroids.dim() == 2, "{}: 'centroids' must be [clusters, dims], got {}", path,
            eng::shape_str(out.centroids.shape()));
  out.config = nlohmann::json::parse(f.metadata["config"], nullptr, false);
  out.checkpoint_identity = f.metadata["checkpoint"];
  return out;
}

// assignments.safetensors: "cluster" I32 [n] (balanced), "cluster_argmax" I32 [n] (plain argmax of A), "image_index"
// I64 [n]; metadata format, clusters, checkpoint.
inline void write_assignments(const std::string& path, const FeatureBank& bank, const Assignment& a, int64_t clusters) {
  const int64_t n = int64_t(a.balanced.size());
  ENG_CHECK(n == bank.n, "{}: {} assignments for a bank of {} images", path, n, bank.n);
  std::vector<int64_t> index = bank.image_index;
  if (index.empty())
    for (int64_t i = 0; i < n; i++) index.push_back(i);
  std::vector<uint8_t> bytes = eng::serialize_safetensors(
      {{"cluster", eng::Tensor::from_vector(a.balanced, {n})},
       {"cluster_argmax", eng::Tensor::from_vector(a.plain, {n})},
       {"image_index", eng::Tensor::from_vector(index, {n})}},
      {{"format", "moce-assignments"}, {"clusters", std::to_string(clusters)}, {"checkpoint", bank.checkpoint_identity}},
      path);
  eng::io::write_file_atomic(path, bytes.data(), bytes.size());
}

// The cluster of a bank image by its data-set index (what the MoCE gate reads), from assignments.safetensors.
class ClusterLookup {
 public:
  explicit ClusterLookup(const std::string& assignments_path) : path_(assignments_path) {
    eng::SafetensorsFile f = eng::load_safetensors(assignments_path);
    ENG_CHECK(f.metadata.count("format") && f.metadata["format"] == "moce-assignments" && f.tensors.count("cluster") &&
                  f.tensors.count("image_index"),
              "{}: not an assignments file (no metadata format = moce-assignments)", assignments_path);
    clusters_ = std::stoll(f.metadata["clusters"]);
    std::vector<int32_t> c = f.tensors["cluster"].to_vector<int32_t>();
    std::vector<int64_t> idx = f.tensors["image_index"].to_vector<int64_t>();
    ENG_CHECK(c.size() == idx.size(), "{}: {} clusters for {} image indices", assignments_path, c.size(), idx.size());
    for (size_t i = 0; i < c.size(); i++) by_index_[idx[i]] = c[i];
  }
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
inline nlohmann::json clusters_report(const FeatureBank& bank, const ClusterConfig& cfg, const ClusterRun& run,
                                      const std::vector<int64_t>* labels = nullptr) {
  nlohmann::json epochs = nlohmann::json::array();
  for (const EpochStats& e : run.centroids.epochs)
    epochs.push_back({{"epoch", e.epoch}, {"mean_loss", e.mean_loss}, {"seconds", e.seconds}});
  const Assignment& a = run.assignment;
  return {{"images", bank.n},
          {"dim", bank.d},
          {"clusters", cfg.clusters},
          {"checkpoint", bank.checkpoint_identity},
          {"pool", bank.pool},
          {"config", config_to_json(cfg)},
          {"epochs", epochs},
          {"final_sinkhorn", {{"iterations", a.iterations}, {"marginal_error", a.marginal_error}, {"converged", a.converged}}},
          {"balanced", assignment_summary(a.balanced, cfg.clusters, labels)},
          {"plain_argmax", assignment_summary(a.plain, cfg.clusters, labels)}};
}

// Writes centroids.safetensors, assignments.safetensors and clusters.json into `dir` (which must exist).
inline void write_cluster_outputs(const std::string& dir, const FeatureBank& bank, const ClusterConfig& cfg,
                                  const ClusterRun& run, const std::vector<int64_t>* labels = nullptr) {
  const std::filesystem::path d(dir);
  write_centroids((d / "centroids.safetensors").string(), run.centroids.centroids, cfg, bank.checkpoint_identity);
  write_assignments((d / "assignments.safetensors").string(), bank, run.assignment, cfg.clusters);
  eng::io::write_file_atomic((d / "clusters.json").string(), clusters_report(bank, cfg, run, labels).dump(2) + "\n");
}

}  // namespace moce::cluster
