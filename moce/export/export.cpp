// export.cpp: the chosen sub-model of a MoCE / TokenMoE model as a plain ViT (see the header).
#include "moce/export/export.h"

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "moce/common/cli.h"
#include "moce/common/dataset.h"
#include "moce/common/device.h"
#include "moce/finetune/downstream.h"
#include "moce/common/run_folder.h"
#include "moce/train/routing_analysis.h"

namespace moce::exporter {

using eng::Tensor;
using nlohmann::json;

std::vector<int64_t> parse_expert_list(const std::string& text, const TrainedModel& model) {
  const size_t layers = model.layers.size();
  const std::string blocks = json(model.blocks).dump();
  const std::vector<int64_t> experts = parse_index_list(
      text, "--experts", fmt::format("auto or expert numbers separated by commas, one per MoE layer (blocks {})", blocks));
  for (int64_t v : experts)
    ENG_CHECK(v < model.experts.num_experts, "--experts {}: expert {} is not one of 0..{}", text, v,
              model.experts.num_experts - 1);
  ENG_CHECK(experts.size() == layers, "--experts {}: {} given, but the model has {} MoE layers (blocks {}): one each",
            text, experts.size(), layers, blocks);
  return experts;
}

namespace {

// Elements of the model's tensors, all of them or the encoder's only (not the decoder's, not the mask token).
int64_t tensor_elements(model::MaskedAutoencoder& mae, bool encoder_only) {
  int64_t n = 0;
  for (const auto& [name, t] : mae.state_dict()) {
    if (encoder_only && (name.rfind("decoder", 0) == 0 || name == "mask_token")) continue;
    n += t.numel();
  }
  return n;
}

std::string millions(int64_t n) { return fmt::format("{:.3f}M", double(n) / 1e6); }

}  // namespace

ExportResult run_export(const ExportOptions& o) {
  ENG_CHECK(!o.model_file.empty(), "export: --model FILE is required (a moce train weights.safetensors or a dense MAE)");
  ENG_CHECK(file_exists(o.model_file), "--model {}: no such file", o.model_file);
  ENG_CHECK(!o.out.empty(), "export: --out FILE.safetensors is required");
  model::VitPool pool = model::VitPool::Token;
  try {
    pool = model::parse_pool(o.pool);
  } catch (const eng::Error& e) {
    ENG_FAIL("--pool {}: {}", o.pool, e.what());
  }
  ENG_CHECK(pool != model::VitPool::Avg, "--pool avg: the export keeps the encoder's final norm: token or norm_avg");
  const std::filesystem::path out_dir = std::filesystem::path(o.out).parent_path();
  ENG_CHECK(out_dir.empty() || std::filesystem::is_directory(out_dir), "--out {}: its folder {} does not exist", o.out,
            out_dir.string());
  TrainedModel model = load_trained_model(o.model_file);
  ExportResult r;
  r.method = model.method;
  r.blocks = model.blocks;
  const bool auto_experts = o.experts == "auto";
  std::shared_ptr<const data::Dataset> ds;
  if (!o.data.empty()) {
    ds = finetune::select_classes(open_dataset(o.data, true), o.classes, o.limit, o.per_class);
    ENG_CHECK(ds->size() > 0, "--data {}: no images", o.data);
  }
  if (!has_experts(model.method)) {
    ENG_CHECK(auto_experts || o.experts.empty(), "--experts {}: {} is a dense model, it has no expert layers to choose "
              "from (leave --experts out)", o.experts, o.model_file);
  } else if (auto_experts) {
    std::string example = "0";
    for (size_t i = 1; i < model.blocks.size(); i++) example += ",0";
    ENG_CHECK(model.method == TrainMethod::Moce, "--experts auto: the search reads MoCE's clusters, and {} is a {} "
              "model; give one expert per MoE layer (blocks {}), e.g. --experts {}", o.model_file,
              train_method_name(model.method), json(model.blocks).dump(), example);
    ENG_CHECK(ds, "--experts auto searches on the downstream training images: give --data DIR (or --experts E1,E2)");
    search::SearchOptions so;
    so.features_checkpoint = o.features_checkpoint;
    so.batch = o.batch;
    so.workers = o.workers;
    so.device = o.device;
    r.search = search::search_experts(model, ds, o.data, so);
    r.experts = r.search->experts;
    std::printf("%s", search::search_summary(*r.search).c_str());
  } else {
    r.experts = parse_expert_list(o.experts, model);
  }

  model::VisionTransformer vit = dense_vit_of(model, r.experts, pool);
  r.config = vit.config();
  r.source_encoder_tensors = tensor_elements(*model.mae, true);
  r.source_tensors = tensor_elements(*model.mae, false) + (model.centroids.defined() ? model.centroids.numel() : 0);
  int64_t exported = 0;
  for (const auto& [name, t] : vit.state_dict()) exported += t.numel();
  r.export_tensors = exported;

  if (ds && has_experts(model.method)) {
    RoutingOptions ro;
    ro.features_checkpoint = o.features_checkpoint;
    ro.batch = o.batch;
    ro.workers = o.workers;
    ro.verbose = false;
    move_to_device(*model.mae, o.device);
    RoutingInput routed = collect_routing(model, ds, ro, o.device);
    for (size_t l = 0; l < routed.layers.size(); l++) {
      const RoutingLayer& layer = routed.layers[l];
      GateFigures g;
      g.block = layer.block;
      g.expert = r.experts[l];
      g.mean_gate = layer.gate_mean[size_t(g.expert)];
      int64_t top = 0, all = 0;
      for (size_t i = 0; i < layer.counts.size(); i++) {
        all += layer.counts[i];
        if (int64_t(i) % layer.num_experts == g.expert) top += layer.counts[i];
      }
      g.top_share = double(top) / double(std::max<int64_t>(all, 1));
      r.gates.push_back(g);
    }
  }

  json chosen = json::array(), gates = json::array();
  for (size_t l = 0; l < r.blocks.size(); l++) chosen.push_back({{"block", r.blocks[l]}, {"expert", r.experts[l]}});
  for (const GateFigures& g : r.gates)
    gates.push_back({{"block", g.block}, {"expert", g.expert}, {"mean_gate", g.mean_gate}, {"top_share", g.top_share}});
  r.metadata = {{"source_model", o.model_file},
                {"method", train_method_name(model.method)},
                {"experts", chosen},
                {"global_pool", model::pool_name(pool)},
                {"combine_weight", "the exported MLP is expert(x) alone; the routed model gives G_e(x) * expert(x)"},
                {"parameters", {{"source_encoder", r.source_encoder_tensors}, {"source", r.source_tensors},
                                {"export", r.export_tensors}}}};
  if (r.search) r.metadata["search"] = search::search_to_json(*r.search, o.model_file);
  if (!gates.empty()) r.metadata["gates"] = gates;
  if (ds) r.metadata["data"] = o.data;
  if (ds && !o.classes.empty()) r.metadata["classes"] = o.classes;

  eng::save_safetensors(o.out, vit.state_dict(),
                        {{"format", kExportFormat}, {"config", model::config_to_json(r.config).dump()},
                         {"export", r.metadata.dump()}});
  if (r.search) {
    std::string search_file = o.search_json;
    if (search_file.empty()) {
      const std::string suffix = ".safetensors";
      const bool ends = o.out.size() > suffix.size() && o.out.compare(o.out.size() - suffix.size(), suffix.size(), suffix) == 0;
      search_file = (ends ? o.out.substr(0, o.out.size() - suffix.size()) : o.out) + ".search.json";
    }
    write_json_file(search_file, search::search_to_json(*r.search, o.model_file));
    std::printf("wrote %s\n", search_file.c_str());
  }

  std::printf("export: %s model %s", train_method_name(model.method), o.model_file.c_str());
  for (size_t l = 0; l < r.blocks.size(); l++)
    std::printf("%s block %lld: expert %lld", l ? "," : ";", (long long)r.blocks[l], (long long)r.experts[l]);
  std::printf("\nparameters: source encoder %s (whole model %s with the decoder), export %s (%.1f%% of the encoder)\n",
              millions(r.source_encoder_tensors).c_str(), millions(r.source_tensors).c_str(),
              millions(r.export_tensors).c_str(), 100.0 * double(r.export_tensors) / double(r.source_encoder_tensors));
  for (const GateFigures& g : r.gates)
    std::printf("block %lld, expert %lld on --data: mean gate %.4f (the routed output's scale, which the export drops), "
                "top choice of %.1f%% of the %s\n", (long long)g.block, (long long)g.expert, g.mean_gate,
                100.0 * g.top_share, model.method == TrainMethod::Moce ? "images" : "tokens");
  std::printf("wrote %s\n", o.out.c_str());
  return r;
}

}  // namespace moce::exporter
