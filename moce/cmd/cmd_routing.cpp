// cmd_routing.cpp: `moce routing`, where a trained MoCE or TokenMoE model sends the images of each class: the flags,
// then moce::collect_routing (moce/train/routing_analysis.h) and moce::write_routing_report (moce/eval/routing_report.h).
//
//   moce routing --model runs/moce/weights.safetensors --data ../shared/data/tiny-imagenet-32/val --out runs/moce/routing
#include <cstdio>

#include "engine/error.h"
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/common/run_folder.h"
#include "moce/train/routing_analysis.h"

namespace moce {

int cmd_routing(int argc, char** argv) {
  Args a("routing", "Where the expert layers of a moce train model send the images of each class: class x expert\n"
                    "heatmaps, NMI of image -> expert against the labels, majority and load figures, sample strips.");
  a.add("model", "", "a moce train output: weights.safetensors or checkpoint-last.safetensors (moce or tokenmoe; required)")
      .add("data", "", "labelled images: an ImageFolder root, fashion-mnist, or cifar10-bin:DIR (required)")
      .add("out", "", "output folder (routing.json, routing_heatmap_layer<B>.png, expert_samples_layer<B>.png); "
                      "default: <model's folder>/routing")
      .add("features-checkpoint", "", "MoCE: the dense MAE whose features route each image to its cluster (default: the run's --init)")
      .add("limit", "0", "use only the first N images (0 = all)")
      .add("batch", "128", "images per batch")
      .add("workers", "2", "data loader threads")
      .add("strip-images", "16", "images per expert in the sample strips")
      .add("heatmap-rows", "200", "at most this many classes (rows) in the heatmap")
      .add("device", "cpu", "cpu, or cuda / cuda:N: the encoder passes on that GPU");
  if (!a.parse(argc, argv, 2)) return 0;
  const eng::Device device = device_from_flag(a.str("device"));
  const std::string model_file = a.str("model");
  ENG_CHECK(!model_file.empty(), "routing: --model FILE is required (a moce train weights.safetensors)");
  ENG_CHECK(file_exists(model_file), "--model {}: no such file", model_file);
  ENG_CHECK(!a.str("data").empty(), "routing: --data is required (labelled images)");
  RoutingOptions o;
  o.features_checkpoint = a.str("features-checkpoint");
  o.batch = a.i64_at_least("batch", 1);
  o.workers = int(a.i64_at_least("workers", 0));
  o.strip_images = a.i64_at_least("strip-images", 0);
  o.heatmap_rows = a.i64_at_least("heatmap-rows", 0);
  ENG_CHECK(o.strip_images > 0 && o.heatmap_rows > 0, "--strip-images and --heatmap-rows must be positive");
  std::string out = a.str("out");
  if (out.empty()) {
    const size_t slash = model_file.find_last_of('/');
    out = (slash == std::string::npos ? std::string(".") : model_file.substr(0, slash)) + "/routing";
  }

  TrainedModel model = load_trained_model(model_file);
  auto ds = limit_dataset(open_dataset(a.str("data"), false), a.i64_at_least("limit", 0));
  move_to_device(*model.mae, device);
  std::printf("routing: %s model (%lld experts in blocks %s) over %s on %s\n", train_method_name(model.method),
              (long long)model.experts.num_experts, nlohmann::json(model.blocks).dump().c_str(), ds->describe().c_str(),
              device.str().c_str());
  RoutingInput in = collect_routing(model, ds, o, device);
  make_run_dir(out);
  const RunLock lock(out);
  RoutingReportFiles files = write_routing_report(in, out);
  for (const nlohmann::json& layer : files.report["layers"])
    std::printf("block %s: NMI %.4f  purity %.4f  classes with a majority expert %.1f%%  busiest expert %s takes %.1f%% "
                "of classes\n", layer.value("block", nlohmann::json()).dump().c_str(), layer.value("nmi", 0.0),
                layer.value("purity", 0.0), 100.0 * layer.value("majority_class_share", 0.0),
                layer.value("busiest_expert", nlohmann::json()).dump().c_str(),
                100.0 * layer.value("busiest_expert_class_share", 0.0));
  for (const std::string& f : files.written) std::printf("wrote %s\n", f.c_str());
  return 0;
}

}  // namespace moce
