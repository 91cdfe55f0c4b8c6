// cmd_search.cpp: `moce search`, the expert search for a downstream task: the flags, then MoCE's rule
// (moce/search/search.h) and the paper's comparisons over the candidate sub-models, k-NN and LogME
// (moce/search/methods.h), and search.json.
//
//   moce search --model runs/moce/weights.safetensors --data ../shared/data/tiny-imagenet-32/train --out runs/moce/search.json
//   moce search --model runs/moce/weights.safetensors --data DOWNSTREAM_DIR --method all
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "engine/error.h"
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/common/run_folder.h"
#include "moce/finetune/downstream.h"
#include "moce/search/methods.h"
#include "moce/search/search.h"

namespace moce {

int cmd_search(int argc, char** argv) {
  Args a("search", "Expert search. moce (MoCE's rule): the downstream training images vote for their nearest cluster\n"
                   "(dense MAE features, argmax f.C); the winner's gate names the expert of every MoE layer. knn, logme:\n"
                   "every candidate sub-model (the distinct expert paths the gates give the clusters) scored by the k-NN\n"
                   "top-1 of its features on a held-out split of --data, or by their LogME; the best is chosen.\n"
                   "early-stop, exhaustive: every candidate fine-tuned (moce finetune's classifier, one lr and seed) on\n"
                   "that split for --early-steps or --full-steps and scored on the held-out part; exhaustive also names\n"
                   "the worst.");
  a.add("model", "", "a moce train --method moce output: weights.safetensors or checkpoint-last.safetensors (required)")
      .add("data", "", "the downstream training images: an ImageFolder root, fashion-mnist, or cifar10-bin:DIR (required)")
      .add("out", "", "search.json to write, or a folder to write it in (default: <model's folder>/search.json)")
      .add("method", "moce", "moce, knn, logme, early-stop, exhaustive, a comma list, all (the first three) or every: "
                             "each prints its choice, scores and cost")
      .add("knn-k", "20", "knn: neighbours (cosine, temperature-weighted vote)")
      .add("val-fraction", "0.2", "knn: the share of each class of --data held out to score the candidates")
      .add("split-seed", "0", "knn: the seed of the held-out split")
      .add("early-steps", "30", "early-stop: fine-tuning steps per candidate")
      .add("full-steps", "120", "exhaustive: fine-tuning steps per candidate")
      .add("finetune-lr", "0.01", "early-stop, exhaustive: the SGD learning rate of every candidate's run")
      .add("finetune-batch", "64", "early-stop, exhaustive: images per fine-tuning step")
      .add("finetune-seed", "0", "early-stop, exhaustive: the seed of every candidate's run")
      .add("features-checkpoint", "", "the dense MAE the clusters were made with (default: the run's --init)")
      .add("classes", "", "of --data, only these classes: names or indices, comma-separated (as moce finetune)")
      .add("limit", "0", "use only the first N images (0 = all; after --classes and --per-class)")
      .add("per-class", "0", "use only the first N images of each class (0 = all; an image folder is stored class by class)")
      .add("batch", "128", "images per batch")
      .add("workers", "2", "data loader threads")
      .add("top", "5", "clusters shown in the printed vote histogram")
      .add("device", "cpu", "cpu, or cuda / cuda:N: MoCE's rule's feature pass on that GPU (knn and logme run on the CPU)");
  if (!a.parse(argc, argv, 2)) return 0;
  const std::string model_file = a.str("model");
  ENG_CHECK(!model_file.empty(), "search: --model FILE is required (a moce train --method moce weights.safetensors)");
  ENG_CHECK(file_exists(model_file), "--model {}: no such file", model_file);
  ENG_CHECK(!a.str("data").empty(), "search: --data DIR is required (the downstream training images)");
  const std::vector<std::string> methods = search::parse_methods(a.str("method"));
  search::MethodOptions mo;
  mo.knn.k = a.i64("knn-k");
  ENG_CHECK(mo.knn.k > 0, "--knn-k must be positive, got {}", mo.knn.k);
  mo.val_fraction = a.f64("val-fraction");
  ENG_CHECK(mo.val_fraction > 0 && mo.val_fraction < 1, "--val-fraction must lie in (0, 1), got {}", mo.val_fraction);
  mo.split_seed = uint64_t(a.i64_at_least("split-seed", 0));
  mo.early_steps = a.i64_at_least("early-steps", 1);
  mo.full_steps = a.i64_at_least("full-steps", 1);
  mo.finetune_lr = a.f64_at_least("finetune-lr", 0);
  mo.finetune_batch = a.i64_at_least("finetune-batch", 1);
  mo.finetune_seed = uint64_t(a.i64_at_least("finetune-seed", 0));
  ENG_CHECK(mo.early_steps > 0, "--early-steps must be positive, got {}", mo.early_steps);
  ENG_CHECK(mo.full_steps > 0, "--full-steps must be positive, got {}", mo.full_steps);
  ENG_CHECK(mo.finetune_lr > 0 && std::isfinite(mo.finetune_lr), "--finetune-lr must be a positive number, got {}",
            mo.finetune_lr);
  ENG_CHECK(mo.finetune_batch > 0, "--finetune-batch must be positive, got {}", mo.finetune_batch);
  search::SearchOptions o;
  o.features_checkpoint = a.str("features-checkpoint");
  o.batch = a.i64_at_least("batch", 1);
  o.workers = int(a.i64_at_least("workers", 0));
  o.device = device_from_flag(a.str("device"));
  std::string out = a.str("out");
  if (out.empty()) {
    const size_t slash = model_file.find_last_of('/');
    out = (slash == std::string::npos ? std::string(".") : model_file.substr(0, slash)) + "/search.json";
  } else if (std::filesystem::is_directory(out)) {
    out += "/search.json";
  }
  TrainedModel model = load_trained_model(model_file);
  auto ds = finetune::select_classes(open_dataset(a.str("data"), true), a.str("classes"), a.i64("limit"),
                                       a.i64("per-class"));
  search::MethodsReport r = search::run_search_methods(model, ds, a.str("data"), methods, o, mo);
  std::printf("%s", search::methods_summary(r, a.i64("top")).c_str());
  write_json_file(out, search::methods_to_json(r, model_file));
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace moce
