// cmd_eval_mae.cpp: `moce eval-mae`, the evaluation of a pre-trained MAE (or of the same architecture at
// random initialisation): k-NN and linear-probe top-1 on frozen features, reconstruction PSNR on the test
// set, and a PNG of reconstructions (moce/eval/report.h). Writes <out>/eval.json and <out>/reconstructions.png.
//
//   moce eval-mae --checkpoint runs/pretrain/checkpoint-last.safetensors --out runs/eval
//   moce eval-mae --random-init --config mae_tiny_p4_32 --out runs/eval-random     (the baseline)
//   moce eval-mae --checkpoint ... --device cuda      (the encoder passes on the GPU; k-NN and probe on the CPU)
#include <cstdio>
#include <memory>

#include "engine/error.h"
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/eval/report.h"
#include "moce/train/checkpoint.h"
#include "moce/train/expert_training.h"

namespace moce {

int cmd_eval_mae(int argc, char** argv) {
  Args a("eval-mae", "Evaluate a pre-trained MAE: k-NN and linear-probe accuracy on frozen features, reconstruction PSNR,\n"
                     "and a PNG of reconstructions (original | masked | reconstruction | reconstruction + visible).");
  a.add("checkpoint", "", "a checkpoint or weights file (safetensors); the model config comes from its metadata")
      .add("config", "", "model config name, for a file without config metadata or with --random-init")
      .add("features-checkpoint", "", "a MoCE model (moce train): the dense MAE whose features route each image to its "
                                      "cluster (default: the run's --init)")
      .flag("random-init", "evaluate the architecture at its seeded random initialisation instead of the weights")
      .add("train-data", "fashion-mnist", "training images for k-NN / probe: fashion-mnist, cifar10-bin:DIR or an image folder")
      .add("test-data", "fashion-mnist", "test images (same forms; fashion-mnist means its t10k split)")
      .add("out", "runs/eval-mae", "output directory (eval.json, reconstructions.png)")
      .add("knn-k", "20", "neighbours of the k-NN classifier")
      .add("knn-temperature", "0.07", "temperature of the k-NN vote weight exp(sim / T)")
      .add("probe-epochs", "100", "linear-probe epochs")
      .add("probe-lr", "1e-2", "linear-probe peak learning rate (cosine decay to 0)")
      .add("probe-batch", "256", "linear-probe batch size")
      .add("probe-optimizer", "adamw", "adamw or sgd (momentum 0.9)")
      .add("probe-weight-decay", "0", "linear-probe weight decay (not on the bias)")
      .add("mask-ratio", "0.75", "fraction of patches removed for the reconstruction PSNR")
      .add("limit-train", "0", "use only the first N training images (0 = all)")
      .add("limit-test", "0", "use only the first N test images (0 = all)")
      .add("seed", "0", "seed of the mask noise, the probe, and the random initialisation")
      .add("workers", "2", "data loader threads")
      .add("batch", "128", "images per forward pass")
      .add("grid", "8", "images in reconstructions.png (0 = no picture)")
      .add("device", "cpu", "cpu, or cuda / cuda:N: run the model (features, reconstructions) on that GPU");
  if (!a.parse(argc, argv, 2)) return 0;
  // First: without a GPU, `--device cuda` fails before any file is read.
  const eng::Device device = device_from_flag(a.str("device"));

  const std::string ckpt = a.str("checkpoint");
  const bool random_init = a.on("random-init");
  const uint64_t seed = uint64_t(a.i64_at_least("seed", 0));
  ENG_CHECK(!ckpt.empty() || random_init, "eval-mae: --checkpoint FILE is required (or --random-init with --config NAME)");
  EvalMaeOptions o;
  o.out_dir = a.str("out");
  o.knn.k = a.i64("knn-k");
  o.knn.temperature = a.f64("knn-temperature");
  o.probe.epochs = a.i64("probe-epochs");
  o.probe.lr = a.f64("probe-lr");
  o.probe.batch_size = a.i64("probe-batch");
  o.probe.optimizer = a.str("probe-optimizer");
  o.probe.weight_decay = a.f64_at_least("probe-weight-decay", 0);
  o.probe.seed = seed;
  o.recon.mask_ratio = a.f64("mask-ratio");
  o.recon.seed = seed;
  o.recon.grid_images = a.i64("grid");
  o.recon.batch_size = o.extract.batch_size = a.i64("batch");
  o.recon.workers = o.extract.workers = int(a.i64("workers"));
  a.i64_at_least("limit-train", 0);  // both read below: their ranges checked before any file is read
  a.i64_at_least("limit-test", 0);
  ENG_CHECK(o.knn.k > 0, "--knn-k must be positive, got {}", o.knn.k);
  ENG_CHECK(o.knn.temperature > 0, "--knn-temperature must be positive, got {}", o.knn.temperature);
  ENG_CHECK(o.probe.epochs > 0 && o.probe.batch_size > 0 && o.probe.lr > 0,
            "--probe-epochs, --probe-batch and --probe-lr must be positive");
  ENG_CHECK(o.probe.optimizer == "adamw" || o.probe.optimizer == "sgd", "--probe-optimizer must be adamw or sgd, got '{}'",
            o.probe.optimizer);
  ENG_CHECK(o.recon.mask_ratio > 0 && o.recon.mask_ratio < 1, "--mask-ratio must be in (0, 1), got {}", o.recon.mask_ratio);
  ENG_CHECK(o.recon.grid_images >= 0, "--grid must be >= 0, got {}", o.recon.grid_images);
  ENG_CHECK(o.extract.batch_size > 0 && o.extract.workers >= 0, "--batch must be positive and --workers >= 0");

  nlohmann::json model_info;
  // A model of moce train (MoCE, TokenMoE, dense) or a pre-trained MAE. evaluate_mae runs it where its weights are.
  const TrainMethod method = ckpt.empty() || random_init ? TrainMethod::Mae : method_of_model_file(ckpt);
  TrainedModel trained;
  std::unique_ptr<MoceRouter> router;
  if (method == TrainMethod::Mae) {
    trained.mae = std::make_unique<model::MaskedAutoencoder>(load_mae(ckpt, a.str("config"), random_init, seed, &model_info));
    move_to_device(*trained.mae, device);
  } else {
    trained = load_trained_model(ckpt);
    move_to_device(*trained.mae, device);
    model_info = {{"file", ckpt}, {"method", train_method_name(method)}, {"moe_blocks", trained.blocks}};
    // MoCE routes each image by its cluster: the argmax of its dense feature against the centroids.
    if (method == TrainMethod::Moce) {
      router = std::make_unique<MoceRouter>(trained, a.str("features-checkpoint"), device);
      model_info["features_checkpoint"] = router->feature_checkpoint();
    }
  }
  model::MaskedAutoencoder& mae = *trained.mae;
  auto train = limit_dataset(open_dataset(a.str("train-data"), true), a.i64("limit-train"));
  auto test = limit_dataset(open_dataset(a.str("test-data"), false), a.i64("limit-test"));

  o.inputs = {{"command", "eval-mae"},
              {"checkpoint", ckpt.empty() ? nlohmann::json(nullptr) : nlohmann::json(ckpt)},
              {"loaded", model_info},
              {"random_init", random_init},
              {"train_data", a.str("train-data")},
              {"test_data", a.str("test-data")},
              {"limit_train", a.i64("limit-train")},
              {"limit_test", a.i64("limit-test")},
              {"seed", seed},
              {"batch", o.extract.batch_size},
              {"workers", o.extract.workers},
              {"device", device.str()},
              {"grid", o.recon.grid_images},
              {"num_parameters", mae.num_parameters()}};
  std::printf("eval-mae %s (%lld parameters, %s) on %s: train %s, test %s; out %s\n", mae.config().name.c_str(),
              (long long)mae.num_parameters(),
              random_init ? fmt::format("random init, seed {}", seed).c_str() : ckpt.c_str(), device.str().c_str(),
              train->describe().c_str(),
              test->describe().c_str(), o.out_dir.c_str());
  if (model_info.value("unused_tensors", int64_t(0)) > 0)
    std::printf("note: %s holds %lld tensors the MAE does not use\n", ckpt.c_str(),
                (long long)model_info["unused_tensors"].get<int64_t>());
  std::fflush(stdout);

  nlohmann::json j = evaluate_mae(mae, train, test, o);
  std::printf("wrote %s/eval.json%s\n", o.out_dir.c_str(),
              j["reconstruction"].contains("png") ? fmt::format(" and {}/reconstructions.png", o.out_dir).c_str() : "");
  return 0;
}

}  // namespace moce
