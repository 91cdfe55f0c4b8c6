// cmd_cluster.cpp: `moce cluster`, stage one of MoCE: the feature bank of a pre-trained MAE, balanced Sinkhorn
// clustering with learnable centroids (or Lloyd's k-means as the peer, --algorithm kmeans), and the run folder
// (moce/cluster/command.h). Only the flags live here.
//
//   moce cluster --checkpoint runs/quickstart/checkpoint-last.safetensors --data fashion-mnist --clusters 10 --out runs/cl10
//   moce cluster --bank runs/cl10/bank.safetensors --data fashion-mnist --clusters 32 --out runs/cl32   (no extraction)
//   moce cluster --bank B --data DIR --algorithm kmeans --init kmeans++ --groups DIR/../splits.tsv --out runs/km
#include "engine/error.h"
#include "moce/cluster/command.h"
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/device.h"
#include "moce/train/checkpoint.h"

namespace moce {

int cmd_cluster(int argc, char** argv) {
  Args a("cluster",
         "Cluster a data set by the features of a pre-trained MAE (MoCE stage one): the feature bank, centroids learned by\n"
         "the paper's alternating Sinkhorn / SGD optimisation, a balanced hard assignment of every image, and\n"
         "OUT/{bank.safetensors(+.paths), centroids.safetensors, assignments.safetensors, clusters.json, cluster_samples.png}.");
  a.add("checkpoint", "", "the MAE checkpoint or weights file whose encoder makes the features (not needed with --bank)")
      .add("config", "", "model config name, for a weights file without config metadata")
      .add("data", "", "the images: an image folder (root/<class>/<image>), fashion-mnist or cifar10-bin:DIR (train split)")
      .add("limit", "0", "use only the first N images of --data (0 = all)")
      .add("clusters", "256", "M, the number of clusters (at least 2, at most the number of images)")
      .add("algorithm", "sinkhorn", "sinkhorn (the paper's balanced clustering with learned centroids) or kmeans (plain "
                                    "Euclidean Lloyd on the same bank: the peer; uses --clusters, --init, --seed)")
      .add("kmeans-iters", "50", "k-means: at most this many Lloyd iterations (it stops earlier when no image moves)")
      .add("groups", "", "a TSV with a header, the class folder name first (e.g. tiny-imagenet-32/splits.tsv): "
                         "clusters.json also scores purity and NMI against each image's group (needs --data)")
      .add("groups-column", "split", "the column of --groups that names the group")
      .add("out", "", "the run folder; one holding another run is refused unless --force")
      .flag("force", "write over an --out folder that holds another run")
      .add("bank", "", "reuse this bank file (e.g. OUT/bank.safetensors of an earlier run) instead of extracting")
      .add("centroids", "", "assign with these centroids (a centroids.safetensors) instead of learning them; M is the file's")
      .add("pool", "mean", "feature: mean (of the patch tokens after the final norm, as eval-mae) or cls (the class token)")
      .add("bank-dtype", "f32", "bank storage: f32 or bf16 (half the memory: 1.28M x 768 is 2 GB)")
      .add("extract-batch", "256", "images per encoder pass while extracting")
      .add("init", "random", "centroid initialisation: random (unit vectors; for kmeans M distinct bank rows) or kmeans++ "
                             "(from the bank; recommended, see --lr)")
      .add("kmeanspp-sample", "16384", "k-means++ draws from a seeded sample of this many bank rows (0 = all)")
      .add("epochs", "10", "epochs of the alternating optimisation (at least 1)")
      .add("batch", "4096", "images per Sinkhorn / SGD step")
      .add("eps", "0.05", "Sinkhorn's entropic regularisation epsilon of the training steps (SwAV)")
      .add("sinkhorn-iters", "3", "Sinkhorn iterations per training step (SwAV)")
      .add("tau", "0.1", "softmax temperature of the centroid loss (SwAV)")
      .add("lr", "0.1", "SGD learning rate (the paper's). With --weight-decay 0.9 and rows renormalised every step the "
                        "effective step is ~10x this; moce/cluster/README.md found --lr 0.01 --init kmeans++ converges")
      .add("momentum", "0.9", "SGD momentum (the paper's)")
      .add("weight-decay", "0.9", "SGD L2 weight decay (the paper's 0.9; on planted clusters it does not converge with "
                                  "--lr 0.1: the loss rises, NMI 0.73; --lr 0.01 or --weight-decay 0 recover them, NMI 1.0)")
      .add("seed", "0", "seed of the initialisation, the shuffles and the k-means++ sample")
      .add("assign-eps", "0.05", "epsilon of the final balanced assignment's Sinkhorn")
      .add("assign-tolerance", "1e-3", "the final Sinkhorn stops when every cluster's mass is within this of n / M")
      .add("assign-max-iters", "1000", "the final Sinkhorn's iteration limit")
      .add("grid-clusters", "8", "rows (clusters, spread over the ids) of cluster_samples.png; 0 = no picture")
      .add("grid-images", "16", "images per row of cluster_samples.png")
      .add("workers", "2", "data loader threads")
      .add("device", "cpu", "cpu, or cuda / cuda:N: the encoder and the centroid steps on that GPU (the final assignment on the CPU)");
  if (!a.parse(argc, argv, 2)) return 0;
  cluster::ClusterOptions o;
  o.device = device_from_flag(a.str("device"));
  o.checkpoint = a.str("checkpoint");
  o.data = a.str("data");
  o.out = a.str("out");
  o.bank = a.str("bank");
  o.centroids = a.str("centroids");
  o.pool = a.str("pool");
  o.bank_dtype = a.str("bank-dtype");
  o.force = a.on("force");
  o.limit = a.i64("limit");
  o.extract_batch = a.i64("extract-batch");
  o.workers = int(a.i64("workers"));
  o.grid_clusters = a.i64("grid-clusters");
  o.grid_images = a.i64("grid-images");
  o.algorithm = a.str("algorithm");
  o.kmeans_iterations = int(a.i64("kmeans-iters"));
  o.groups = a.str("groups");
  o.groups_column = a.str("groups-column");
  cluster::ClusterConfig& c = o.cluster;
  c.clusters = a.i64("clusters");
  o.clusters_from_centroids = !o.centroids.empty() && !a.given("clusters");
  c.epochs = a.i64("epochs");
  c.batch = a.i64("batch");
  c.eps = a.f64("eps");
  c.sinkhorn_iterations = int(a.i64("sinkhorn-iters"));
  c.tau = a.f64("tau");
  c.lr = a.f64("lr");
  c.momentum = a.f64("momentum");
  c.weight_decay = a.f64("weight-decay");
  c.init = a.str("init");
  c.kmeanspp_sample = a.i64("kmeanspp-sample");
  c.seed = uint64_t(a.i64_at_least("seed", 0));
  c.assign_eps = a.f64("assign-eps");
  c.assign_tolerance = a.f64("assign-tolerance");
  c.assign_max_iterations = int(a.i64("assign-max-iters"));
  const std::string config = a.str("config");
  o.load_model = [config](const std::string& file) { return load_mae(file, config, false, 0); };
  cluster::run_cluster_command(o);
  return 0;
}

}  // namespace moce
