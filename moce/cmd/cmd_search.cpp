// cmd_search.cpp: `moce search`, MoCE's expert search for a downstream task: the flags, then moce::search::search_experts
// (moce/search/search.h) and search.json.
//
//   moce search --model runs/moce/weights.safetensors --data ../shared/data/tiny-imagenet-32/train --out runs/moce/search.json
#include <cstdio>

#include "engine/error.h"
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/common/run_folder.h"
#include "moce/search/search.h"

namespace moce {

int cmd_search(int argc, char** argv) {
  Args a("search", "MoCE's expert search: the downstream training images vote for their nearest cluster (dense MAE\n"
                   "features, argmax f.C); the winner's gate names the expert of every MoE layer.");
  a.add("model", "", "a moce train --method moce output: weights.safetensors or checkpoint-last.safetensors (required)")
      .add("data", "", "the downstream training images: an ImageFolder root, fashion-mnist, or cifar10-bin:DIR (required)")
      .add("out", "", "search.json to write (default: <model's folder>/search.json)")
      .add("features-checkpoint", "", "the dense MAE the clusters were made with (default: the run's --init)")
      .add("limit", "0", "use only the first N images (0 = all)")
      .add("batch", "128", "images per batch")
      .add("workers", "2", "data loader threads")
      .add("top", "5", "clusters shown in the printed vote histogram")
      .add("device", "cpu", "cpu, or cuda / cuda:N: the feature pass on that GPU");
  if (!a.parse(argc, argv, 2)) return 0;
  const std::string model_file = a.str("model");
  ENG_CHECK(!model_file.empty(), "search: --model FILE is required (a moce train --method moce weights.safetensors)");
  ENG_CHECK(file_exists(model_file), "--model {}: no such file", model_file);
  ENG_CHECK(!a.str("data").empty(), "search: --data DIR is required (the downstream training images)");
  search::SearchOptions o;
  o.features_checkpoint = a.str("features-checkpoint");
  o.batch = a.i64("batch");
  o.workers = int(a.i64("workers"));
  o.device = device_from_flag(a.str("device"));
  std::string out = a.str("out");
  if (out.empty()) {
    const size_t slash = model_file.find_last_of('/');
    out = (slash == std::string::npos ? std::string(".") : model_file.substr(0, slash)) + "/search.json";
  }
  TrainedModel model = load_trained_model(model_file);
  auto ds = limit_dataset(open_dataset(a.str("data"), true), a.i64("limit"));
  search::SearchResult r = search::search_experts(model, ds, a.str("data"), o);
  std::printf("%s", search::search_summary(r, a.i64("top")).c_str());
  write_json_file(out, search::search_to_json(r, model_file));
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace moce
