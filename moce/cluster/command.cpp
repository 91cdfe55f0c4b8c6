// command.cpp: run_cluster_command, the checks before anything is written, and the sample grid.
#include "moce/cluster/command.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "data/transforms.h"
#include "engine/error.h"
#include "moce/cluster/extract.h"
#include "moce/cluster/groups.h"
#include "moce/cluster/io.h"
#include "moce/cluster/kmeans.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/common/image_grid.h"
#include "moce/common/run_folder.h"

namespace moce::cluster {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kRunFormat = "moce-cluster-run";

// What makes two cluster runs the same run: the clustering config and the features' pooling, and for k-means its
// algorithm and iteration limit (left out for Sinkhorn, so that folders written before --algorithm existed still match).
json run_identity(const ClusterOptions& opt) {
  json id = {{"config", config_to_json(opt.cluster)}, {"pool", opt.pool}};
  if (opt.algorithm == "kmeans") id["kmeans"] = {{"algorithm", "kmeans"}, {"max_iterations", opt.kmeans_iterations}};
  return id;
}

std::string mae_name_of(const std::string& checkpoint) { return fs::path(checkpoint).filename().string(); }

}  // namespace

void validate_cluster_options(const ClusterOptions& opt) {
  const ClusterConfig& c = opt.cluster;
  ENG_CHECK(!opt.out.empty(), "--out DIR is required");
  ENG_CHECK(!opt.checkpoint.empty() || !opt.bank.empty(), "--checkpoint FILE is required (or --bank FILE to reuse a bank)");
  ENG_CHECK(opt.clusters_from_centroids ? !opt.centroids.empty() : c.clusters >= 2,
            "--clusters must be at least 2, got {}", c.clusters);
  ENG_CHECK(c.epochs >= 1, "--epochs must be at least 1, got {}", c.epochs);
  ENG_CHECK(c.batch >= 1, "--batch must be at least 1, got {}", c.batch);
  ENG_CHECK(c.eps > 0 && std::isfinite(c.eps), "--eps must be positive, got {}", c.eps);
  ENG_CHECK(c.sinkhorn_iterations >= 1, "--sinkhorn-iters must be at least 1, got {}", c.sinkhorn_iterations);
  ENG_CHECK(c.tau > 0 && std::isfinite(c.tau), "--tau must be positive, got {}", c.tau);
  ENG_CHECK(c.lr > 0 && std::isfinite(c.lr), "--lr must be positive, got {}", c.lr);
  ENG_CHECK(c.momentum >= 0 && c.momentum < 1, "--momentum must be in [0, 1), got {}", c.momentum);
  ENG_CHECK(c.weight_decay >= 0 && std::isfinite(c.weight_decay), "--weight-decay must be >= 0, got {}", c.weight_decay);
  ENG_CHECK(c.init == "random" || c.init == "kmeans++", "--init must be random or kmeans++, got '{}'", c.init);
  ENG_CHECK(c.kmeanspp_sample >= 0, "--kmeanspp-sample must be >= 0, got {}", c.kmeanspp_sample);
  ENG_CHECK(c.assign_eps > 0 && std::isfinite(c.assign_eps), "--assign-eps must be positive, got {}", c.assign_eps);
  ENG_CHECK(c.assign_tolerance > 0, "--assign-tolerance must be positive, got {}", c.assign_tolerance);
  ENG_CHECK(c.assign_max_iterations >= 1, "--assign-max-iters must be at least 1, got {}", c.assign_max_iterations);
  ENG_CHECK(opt.pool == "mean" || opt.pool == "cls", "--pool must be mean or cls, got '{}'", opt.pool);
  ENG_CHECK(opt.bank_dtype == "f32" || opt.bank_dtype == "bf16", "--bank-dtype must be f32 or bf16, got '{}'",
            opt.bank_dtype);
  ENG_CHECK(opt.limit >= 0, "--limit must be >= 0, got {}", opt.limit);
  ENG_CHECK(opt.extract_batch >= 1, "--extract-batch must be at least 1, got {}", opt.extract_batch);
  ENG_CHECK(opt.workers >= 0, "--workers must be >= 0, got {}", opt.workers);
  ENG_CHECK(opt.grid_clusters >= 0 && opt.grid_images >= 0, "--grid-clusters and --grid-images must be >= 0");
  ENG_CHECK(!opt.bank.empty() || opt.load_model, "run_cluster_command: no model loader for --checkpoint");
  ENG_CHECK(opt.algorithm == "sinkhorn" || opt.algorithm == "kmeans", "--algorithm must be sinkhorn or kmeans, got '{}'",
            opt.algorithm);
  ENG_CHECK(opt.kmeans_iterations >= 1, "--kmeans-iters must be at least 1, got {}", opt.kmeans_iterations);
  ENG_CHECK(opt.algorithm != "kmeans" || opt.centroids.empty(),
            "--centroids assigns by the balanced Sinkhorn; it does not go with --algorithm kmeans");
  ENG_CHECK(opt.groups.empty() || !opt.data.empty(), "--groups {} needs --data (the class of every image)", opt.groups);
  ENG_CHECK(!opt.groups_column.empty(), "--groups-column must name a column");
}

void check_cluster_out_folder(const ClusterOptions& opt) {
  const fs::path dir(opt.out);
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  ENG_CHECK(fs::is_directory(dir, ec), "--out {}: exists and is not a folder", opt.out);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename() != kRunLockFile) names.push_back(e.path().filename().string());  // a killed run's lock
  if (names.empty() || opt.force) return;
  std::sort(names.begin(), names.end());
  const fs::path report = dir / "clusters.json";
  json old;
  if (fs::exists(report)) {
    std::ifstream f(report);
    old = json::parse(f, nullptr, false);
  }
  const bool cluster_run = old.is_object() && old.value("format", "") == kRunFormat;
  ENG_CHECK(cluster_run, "--out {}: holds another run ({}{}), not a cluster run; pass --force to write over it or choose "
            "another folder", opt.out, names.front(), names.size() > 1 ? fmt::format(" and {} more", names.size() - 1) : "");
  const bool same = old.contains("run") && old["run"] == run_identity(opt);
  ENG_CHECK(same, "--out {}: holds a cluster run of another config ({}); pass --force to write over it or choose another "
            "folder", opt.out, report.string());
  ENG_CHECK(!opt.bank.empty(), "--out {}: already holds this cluster run; pass --bank {} to cluster its bank again, or "
            "--force", opt.out, (dir / "bank.safetensors").string());
}

std::pair<int64_t, int64_t> write_cluster_samples_png(const std::string& path, const FeatureBank& bank,
                                                      const std::vector<int32_t>& assign, int64_t clusters,
                                                      const data::Dataset& ds, int64_t tile, int64_t rows,
                                                      int64_t per_row) {
  ENG_CHECK(int64_t(assign.size()) == bank.n, "{}: {} assignments for a bank of {} images", path, assign.size(), bank.n);
  ENG_CHECK(tile > 0 && rows > 0 && per_row > 0, "{}: an empty grid ({} rows of {} images of {} pixels)", path, rows,
            per_row, tile);
  rows = std::min(rows, clusters);
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(clusters));
  for (int64_t i = 0; i < bank.n; i++) members[size_t(assign[size_t(i)])].push_back(i);
  std::vector<TitledRow> grid(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; r++) {
    const int64_t j = r * clusters / rows;
    const std::vector<int64_t>& m = members[size_t(j)];
    std::string& title = grid[size_t(r)].title;
    title = fmt::format("CLUSTER {}  N={}", j, m.size());
    if (m.empty()) {
      title += "  EMPTY";
    } else {
      std::map<int64_t, int64_t> count;
      for (int64_t i : m) count[ds.label(bank.image_index[size_t(i)])]++;
      auto best = std::max_element(count.begin(), count.end(),
                                   [](const auto& a, const auto& b) { return a.second < b.second; });
      const std::string name = best->first >= 0 && best->first < ds.num_classes() ? ds.classes()[size_t(best->first)]
                                                                                  : std::to_string(best->first);
      title += fmt::format("  MAJORITY {} {:.0f}%", name, 100.0 * double(best->second) / double(m.size()));
    }
    const int64_t shown = std::min<int64_t>(per_row, int64_t(m.size()));
    for (int64_t k = 0; k < shown; k++) {  // members spread over the bank order; a corrupt one is left blank
      const int64_t row = m[size_t(k * int64_t(m.size()) / shown)];
      grid[size_t(r)].tiles.push_back(dataset_tile(ds, bank.image_index[size_t(row)], tile));
    }
  }
  return write_titled_grid_png(path, grid, tile, per_row);
}

ClusterCommandResult run_cluster_command(const ClusterOptions& opt_in) {
  const auto say = opt_in.print ? opt_in.print : [](const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
  ClusterOptions opt = opt_in;
  validate_cluster_options(opt);
  check_cluster_out_folder(opt);

  // Inputs, all read and checked before the folder is touched.
  std::shared_ptr<const data::Dataset> ds;
  if (!opt.data.empty()) {
    ds = limit_dataset(open_dataset(opt.data, true), opt.limit);
    ENG_CHECK(ds->size() > 0, "--data {}: the data set is empty", opt.data);
    if (opt.bank.empty() && !opt.clusters_from_centroids)
      ENG_CHECK(opt.cluster.clusters <= ds->size(), "--clusters {} is larger than the number of images in --data {} ({})",
                opt.cluster.clusters, opt.data, ds->size());
  }
  ENG_CHECK(ds || !opt.bank.empty(), "--data is required to extract a bank (or --bank FILE to reuse one)");
  ClassGroups groups;
  if (!opt.groups.empty()) groups = read_class_groups(opt.groups, opt.groups_column, ds->classes());
  CentroidsFile given;
  if (!opt.centroids.empty()) {
    given = read_centroids(opt.centroids);
    if (opt.clusters_from_centroids) opt.cluster.clusters = given.centroids.size(0);
    ENG_CHECK(given.centroids.size(0) == opt.cluster.clusters, "--centroids {}: holds {} clusters, but --clusters is {}",
              opt.centroids, given.centroids.size(0), opt.cluster.clusters);
  }
  std::string identity = opt.checkpoint.empty() ? std::string() : file_identity(opt.checkpoint);
  FeatureBank bank;
  int64_t tile = 0;
  const fs::path out(opt.out);
  const std::string bank_out = (out / "bank.safetensors").string();
  bool bank_is_output = false;
  if (!opt.bank.empty()) {
    bank = read_bank(opt.bank);
    std::error_code ec;
    bank_is_output = fs::exists(bank_out) && fs::equivalent(opt.bank, bank_out, ec);
    ENG_CHECK(identity.empty() || identity == bank.checkpoint_identity,
              "--bank {}: made from '{}', not from --checkpoint {} ('{}')", opt.bank, bank.checkpoint_identity,
              opt.checkpoint, identity);
    ENG_CHECK(bank.pool == opt.pool, "--bank {}: pooled '{}', but --pool is {}", opt.bank, bank.pool, opt.pool);
    if (ds) {
      for (int64_t r = 0; r < bank.n; r++) {
        const int64_t img = bank.image_index[size_t(r)];
        ENG_CHECK(img >= 0 && img < ds->size(), "--bank {}: row {} is image {}, which --data {} does not have ({} images)",
                  opt.bank, r, img, opt.data, ds->size());
        ENG_CHECK(bank.paths.empty() || bank.paths[size_t(r)] == ds->id(img),
                  "--bank {}: row {} is {}, but image {} of --data {} is {}", opt.bank, r, bank.paths[size_t(r)], img,
                  opt.data, ds->id(img));
      }
      tile = ds->get(bank.image_index[0]).image.size(1);
    }
    say(fmt::format("bank: {} ({} images x {} dims, {}, pool {})", opt.bank, bank.n, bank.d, eng::dtype_name(bank.dtype),
                    bank.pool));
  } else {
    model::MaskedAutoencoder mae = [&] {
      try {
        return opt.load_model(opt.checkpoint);
      } catch (const eng::Error& e) {
        ENG_FAIL("--checkpoint {}: not an MAE checkpoint this build can load: {}", opt.checkpoint, e.what());
      }
    }();
    tile = mae.config().img_size;
    move_to_device(mae, opt.device);
    ExtractOptions eo;
    eo.pool = opt.pool;
    eo.dtype = opt.bank_dtype == "bf16" ? eng::DType::BF16 : eng::DType::F32;
    eo.batch_size = opt.extract_batch;
    eo.workers = opt.workers;
    eo.checkpoint_identity = identity;
    eo.progress = say;
    say(fmt::format("features: {} ({}) over {} on {}", mae_name_of(opt.checkpoint), mae.config().name, ds->describe(),
                    opt.device.str()));
    bank = extract_bank(mae, ds, data::eval_pipeline(mae.config().img_size), eo);
  }
  check_bank_for_clusters(bank, opt.cluster.clusters);
  bank.check();
  if (!opt.centroids.empty())
    ENG_CHECK(given.centroids.size(1) == bank.d, "--centroids {}: centroids of dimension {}, but the bank {} has dimension {}",
              opt.centroids, given.centroids.size(1), opt.bank.empty() ? "extracted" : opt.bank, bank.d);

  // The clustering.
  ClusterRun run;
  const ClusterConfig& cfg = opt.cluster;
  AssignOptions ao;
  ao.eps = cfg.assign_eps;
  ao.tolerance = cfg.assign_tolerance;
  ao.max_iterations = cfg.assign_max_iterations;
  KmeansResult lloyd;
  const bool kmeans = opt.algorithm == "kmeans";
  if (kmeans) {
    KmeansOptions ko;
    ko.clusters = cfg.clusters;
    ko.max_iterations = opt.kmeans_iterations;
    ko.init = cfg.init;
    ko.kmeanspp_sample = cfg.kmeanspp_sample;
    ko.seed = cfg.seed;
    say(fmt::format("k-means (Lloyd): M = {}, at most {} iterations, init {}, on the CPU", cfg.clusters,
                    opt.kmeans_iterations, cfg.init));
    lloyd = kmeans_lloyd(bank, ko, [&](const KmeansIteration& k) {
      say(fmt::format("kmeans iteration {}/{}: {} rows changed, inertia {:.6f}, {} empty clusters re-seeded, {:.2f} s",
                      k.iteration, opt.kmeans_iterations, k.changed, k.inertia, k.reseeded, k.seconds));
    });
    // centroids.safetensors holds unit rows, as the MoCE gate reads them (the direction of each mean); the
    // assignment is Lloyd's own (Euclidean to the unnormalised means), in both "cluster" and "cluster_argmax".
    eng::NoGradGuard ng;
    run.centroids.centroids = eng::l2_normalize(lloyd.centroids, 1).contiguous();
    run.assignment.balanced = lloyd.assign;
    run.assignment.plain = lloyd.assign;
    run.assignment.plan_argmax = lloyd.assign;
    run.assignment.converged = lloyd.converged;
    run.assignment.iterations = int(lloyd.iterations.size());
  } else if (opt.centroids.empty()) {
    say(fmt::format("centroids: M = {}, {} epochs of batches of {}, init {}, eps {}, {} Sinkhorn iterations, tau {}, "
                    "SGD lr {} momentum {} weight decay {}, on {}",
                    cfg.clusters, cfg.epochs, cfg.batch, cfg.init, cfg.eps, cfg.sinkhorn_iterations, cfg.tau, cfg.lr,
                    cfg.momentum, cfg.weight_decay, opt.device.str()));
    run.centroids = train_centroids(bank, cfg, opt.device, [&](const EpochStats& e) {
      say(fmt::format("epoch {}/{}: loss {:.6f}, {:.2f} s", e.epoch, cfg.epochs, e.mean_loss, e.seconds));
    });
  } else {
    run.centroids.centroids = given.centroids;
    say(fmt::format("centroids: {} (M = {}), not trained", opt.centroids, cfg.clusters));
  }
  if (!kmeans) {
    const auto t0 = std::chrono::steady_clock::now();
    run.assignment = assign_balanced(bank, run.centroids.centroids, ao);
    const Assignment& a = run.assignment;
    say(fmt::format("assignment: {} Sinkhorn iterations, marginal error {:.3g} ({}), {:.2f} s", a.iterations,
                    a.marginal_error, a.converged ? "converged" : "NOT converged: raise --assign-max-iters",
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
  } else if (!lloyd.converged) {
    say(fmt::format("warning: k-means did not converge in {} iterations (raise --kmeans-iters)", opt.kmeans_iterations));
  }
  const Assignment& a = run.assignment;
  std::vector<int64_t> labels, group_labels;
  if (ds) labels = bank_labels(bank, *ds);
  if (!opt.groups.empty())
    for (int64_t l : labels) group_labels.push_back(groups.group_of_class[size_t(l)]);

  ClusterCommandResult res;
  res.report = clusters_report(bank, cfg, run, ds ? &labels : nullptr);
  res.report["format"] = kRunFormat;
  res.report["run"] = run_identity(opt);
  res.report["inputs"] = {{"checkpoint", opt.checkpoint.empty() ? json(nullptr) : json(opt.checkpoint)},
                          {"data", opt.data.empty() ? json(nullptr) : json(opt.data)},
                          {"limit", opt.limit},
                          {"bank", opt.bank.empty() ? json(nullptr) : json(opt.bank)},
                          {"centroids", opt.centroids.empty() ? json(nullptr) : json(opt.centroids)},
                          {"bank_dtype", eng::dtype_name(bank.dtype)},
                          {"device", opt.device.str()}};
  res.report["algorithm"] = opt.algorithm;
  if (kmeans) {
    json iters = json::array();
    for (const KmeansIteration& k : lloyd.iterations)
      iters.push_back({{"iteration", k.iteration}, {"changed", k.changed}, {"inertia", k.inertia},
                       {"reseeded", k.reseeded}, {"seconds", k.seconds}});
    std::vector<float> means = lloyd.centroids.to_vector<float>();
    json norms = json::array();
    for (int64_t j = 0; j < cfg.clusters; j++) {
      double s = 0;
      for (int64_t k = 0; k < bank.d; k++) s += double(means[size_t(j * bank.d + k)]) * means[size_t(j * bank.d + k)];
      norms.push_back(std::sqrt(s));
    }
    res.report["kmeans"] = {{"max_iterations", opt.kmeans_iterations}, {"init", cfg.init}, {"iterations", iters},
                            {"converged", lloyd.converged}, {"reseeded_total", lloyd.reseeded_total},
                            {"mean_norms", norms}};
    res.report.erase("final_sinkhorn");
    res.report.erase("epochs");
  }
  if (!opt.groups.empty()) {
    std::vector<int64_t> per_group(groups.names.size(), 0);
    for (int64_t g : group_labels) per_group[size_t(g)]++;
    res.report["groups"] = {{"file", opt.groups}, {"column", opt.groups_column}, {"names", groups.names},
                            {"images_per_group", per_group}};
    res.report["balanced"]["groups"] = {{"purity", purity(a.balanced, group_labels)}, {"nmi", nmi(a.balanced, group_labels)}};
    res.report["plan_argmax"]["groups"] = {{"purity", purity(a.plan_argmax, group_labels)},
                                           {"nmi", nmi(a.plan_argmax, group_labels)}};
    res.report["plain_argmax"]["groups"] = {{"purity", purity(a.plain, group_labels)}, {"nmi", nmi(a.plain, group_labels)}};
  }
  if (kmeans) res.report.erase("plan_argmax");  // Lloyd has no plan: its one assignment is in "balanced"
  for (const char* which : {"balanced", "plan_argmax", "plain_argmax"}) {
    if (kmeans && std::string(which) != "balanced") continue;  // the same assignment
    const json& s = res.report[which];
    if (s["num_empty"].get<int64_t>() > 0)
      say(fmt::format("warning: {} assignment leaves {} of {} clusters empty: {}", which, s["num_empty"].get<int64_t>(),
                      cfg.clusters, s["empty_clusters"].dump()));
    say(fmt::format("{}: sizes min {} median {} max {}, size entropy {:.4f} of log M{}{}", kmeans ? "kmeans" : which,
                    s["min"].get<int64_t>(), s["median"].get<double>(), s["max"].get<int64_t>(),
                    s["size_entropy_normalised"].get<double>(),
                    s.contains("nmi") ? fmt::format(", purity {:.4f}, NMI {:.4f}", s["purity"].get<double>(),
                                                    s["nmi"].get<double>())
                                      : std::string(),
                    s.contains("groups") ? fmt::format("; against the groups purity {:.4f}, NMI {:.4f}",
                                                       s["groups"]["purity"].get<double>(),
                                                       s["groups"]["nmi"].get<double>())
                                         : std::string()));
  }

  // The folder; clusters.json last, so that a folder without it is never taken for a finished run.
  make_run_dir(opt.out);
  const RunLock lock(opt.out);  // one writer; then the folder checked again, as another run may have filled it meanwhile
  check_cluster_out_folder(opt);
  res.files["bank"] = bank_out;
  if (!bank_is_output) write_bank(bank_out, bank);
  res.files["bank_paths"] = bank_paths_file(bank_out);
  res.files["centroids"] = (out / "centroids.safetensors").string();
  write_centroids(res.files["centroids"], run.centroids.centroids, cfg, bank.checkpoint_identity);
  res.files["assignments"] = (out / "assignments.safetensors").string();
  write_assignments(res.files["assignments"], bank, a, cfg.clusters);
  if (ds && opt.grid_clusters > 0 && opt.grid_images > 0) {
    res.files["samples"] = (out / "cluster_samples.png").string();
    auto [w, h] = write_cluster_samples_png(res.files["samples"], bank, a.balanced, cfg.clusters, *ds, tile,
                                            opt.grid_clusters, opt.grid_images);
    res.report["samples_png"] = {{"file", "cluster_samples.png"}, {"width", w}, {"height", h},
                                 {"rows", std::min(opt.grid_clusters, cfg.clusters)}, {"per_row", opt.grid_images}};
  }
  res.files["report"] = (out / "clusters.json").string();
  write_json_file(res.files["report"], res.report);
  for (const char* what : {"bank", "bank_paths", "centroids", "assignments", "samples", "report"})
    if (res.files.count(what)) say(fmt::format("{}: {}", what, res.files[what]));
  return res;
}

}  // namespace moce::cluster
