// io.cpp: the bank, centroid and assignment files, clusters.json, and the lookups.
#include "moce/cluster/io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace moce::cluster {

std::string file_identity(const std::string& path) {
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

void write_bank(const std::string& path, const FeatureBank& bank) {
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

// read_bank without the translation of nlohmann's exceptions (a field of the wrong type) into eng::Error.
static FeatureBank read_bank_file(const std::string& path, bool in_place) {
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
    // Integers checked as such before any conversion: nlohmann casts a float into an integer, undefined when out of
    // range, and a negative or huge size would wrap the byte count below (found by fuzz/fuzz_cluster).
    auto unsigned_list = [](const nlohmann::json& v) {
      if (!v.is_array()) return false;
      for (const nlohmann::json& x : v)
        if (!x.is_number_unsigned() || x.get<uint64_t>() > (uint64_t(1) << 62)) return false;
      return true;
    };
    ENG_CHECK(t.contains("dtype") && t["dtype"].is_string() && t.contains("shape") && unsigned_list(t["shape"]) &&
                  t.contains("data_offsets") && unsigned_list(t["data_offsets"]),
              "{}: tensor '{}' needs a dtype, a shape and data_offsets of non-negative integers", path, name);
    dtype = t["dtype"].get<std::string>();
    shape = t["shape"].get<std::vector<int64_t>>();
    std::vector<uint64_t> off = t["data_offsets"].get<std::vector<uint64_t>>();
    ENG_CHECK(off.size() == 2 && off[0] <= off[1] && off[1] <= size - data_start, "{}: tensor '{}' lies outside the file",
              path, name);
    size_t elem = dtype == "F32" ? 4 : dtype == "BF16" ? 2 : dtype == "I64" ? 8 : 0;
    ENG_CHECK(elem > 0, "{}: tensor '{}' has dtype {}, not one a bank uses", path, name, dtype.substr(0, 20));
    const size_t nbytes = off[1] - off[0];
    size_t count = 1;
    for (int64_t s : shape) {
      ENG_CHECK(s == 0 || count <= nbytes / elem / size_t(s), "{}: tensor '{}' has {} bytes for shape {}", path, name,
                nbytes, eng::shape_str(shape));
      count *= size_t(s);
    }
    ENG_CHECK(count * elem == nbytes, "{}: tensor '{}' has {} bytes for shape {}", path, name, nbytes,
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
  // memcpy with 0 bytes still wants real pointers (UBSan under SANITIZE=1): an empty bank copies nothing.
  if (bank.n > 0) std::memcpy(bank.image_index.data(), index, size_t(bank.n) * 8);
  if (in_place) {
    bank.data = feats;
    bank.owner = owner;
  } else {
    eng::Tensor t = eng::Tensor::empty({bank.n, bank.d}, bank.dtype);
    if (t.nbytes() > 0) std::memcpy(t.raw_data(), feats, t.nbytes());
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

FeatureBank read_bank(const std::string& path, bool in_place) {
  try {
    return read_bank_file(path, in_place);
  } catch (const nlohmann::json::exception& e) {
    ENG_FAIL("{}: the feature bank's header: {}", path, e.what());  // nlohmann's text is one line
  }
}

ClusterRun run_clustering(const FeatureBank& bank, const ClusterConfig& cfg, eng::Device device,
                          const EpochCallback& on_epoch) {
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

void write_centroids(const std::string& path, const eng::Tensor& centroids, const ClusterConfig& cfg,
                     const std::string& checkpoint_identity) {
  std::vector<uint8_t> bytes = eng::serialize_safetensors(
      {{"centroids", centroids}},
      {{"format", "moce-centroids"}, {"config", config_to_json(cfg).dump()}, {"checkpoint", checkpoint_identity}}, path);
  eng::io::write_file_atomic(path, bytes.data(), bytes.size());
}

CentroidsFile read_centroids(const std::string& path) {
  eng::SafetensorsFile f = eng::load_safetensors(path);
  ENG_CHECK(f.metadata.count("format") && f.metadata["format"] == "moce-centroids" && f.tensors.count("centroids"),
            "{}: not a centroids file (no metadata format = moce-centroids)", path);
  CentroidsFile out;
  out.centroids = f.tensors["centroids"].to(eng::DType::F32);
  ENG_CHECK(out.centroids.dim() == 2 && out.centroids.size(0) >= 1 && out.centroids.size(1) >= 1,
            "{}: 'centroids' must be [clusters, dims] with both at least 1, got {}", path,
            eng::shape_str(out.centroids.shape()));
  out.config = nlohmann::json::parse(f.metadata["config"], nullptr, false);
  out.checkpoint_identity = f.metadata["checkpoint"];
  return out;
}

void write_assignments(const std::string& path, const FeatureBank& bank, const Assignment& a, int64_t clusters) {
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

nlohmann::json clusters_report(const FeatureBank& bank, const ClusterConfig& cfg, const ClusterRun& run,
                               const std::vector<int64_t>* labels) {
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
          {"plan_argmax", assignment_summary(a.plan_argmax, cfg.clusters, labels)},
          {"plain_argmax", assignment_summary(a.plain, cfg.clusters, labels)}};
}

void write_cluster_outputs(const std::string& dir, const FeatureBank& bank, const ClusterConfig& cfg,
                           const ClusterRun& run, const std::vector<int64_t>* labels) {
  const std::filesystem::path d(dir);
  write_centroids((d / "centroids.safetensors").string(), run.centroids.centroids, cfg, bank.checkpoint_identity);
  write_assignments((d / "assignments.safetensors").string(), bank, run.assignment, cfg.clusters);
  eng::io::write_file_atomic((d / "clusters.json").string(), clusters_report(bank, cfg, run, labels).dump(2) + "\n");
}

ClusterLookup::ClusterLookup(const std::string& assignments_path) : path_(assignments_path) {
    eng::SafetensorsFile f = eng::load_safetensors(assignments_path);
    ENG_CHECK(f.metadata.count("format") && f.metadata["format"] == "moce-assignments" && f.tensors.count("cluster") &&
                  f.tensors.count("image_index"),
              "{}: not an assignments file (no metadata format = moce-assignments)", assignments_path);
    // Everything checked before use: the MoCE gate indexes by these numbers (found by fuzz/fuzz_cluster: std::stoll
    // let std::invalid_argument escape on a bad "clusters").
    const std::string& count = f.metadata["clusters"];
    ENG_CHECK(!count.empty() && count.size() <= 9 && count.find_first_not_of("0123456789") == std::string::npos &&
                  std::stoll(count) >= 1,
              "{}: metadata \"clusters\" must be a positive integer below 10^9, got \"{}\"", assignments_path,
              count.substr(0, 40));
    clusters_ = std::stoll(count);
    const eng::Tensor& ct = f.tensors["cluster"];
    const eng::Tensor& it = f.tensors["image_index"];
    ENG_CHECK(ct.dtype() == eng::DType::I32 && ct.dim() == 1 && it.dtype() == eng::DType::I64 && it.dim() == 1 &&
                  ct.size(0) == it.size(0),
              "{}: expected 'cluster' I32 [n] and 'image_index' I64 [n], got {} {} and {} {}", assignments_path,
              eng::dtype_name(ct.dtype()), eng::shape_str(ct.shape()), eng::dtype_name(it.dtype()),
              eng::shape_str(it.shape()));
    std::vector<int32_t> c = ct.to_vector<int32_t>();
    std::vector<int64_t> idx = it.to_vector<int64_t>();
    for (size_t i = 0; i < c.size(); i++) {
      ENG_CHECK(c[i] >= 0 && c[i] < clusters_, "{}: row {} is assigned to cluster {}, outside [0, {})", assignments_path,
                i, c[i], clusters_);
      ENG_CHECK(by_index_.emplace(idx[i], c[i]).second, "{}: image {} appears twice", assignments_path, idx[i]);
    }
  }

}  // namespace moce::cluster
