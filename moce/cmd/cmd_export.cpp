// cmd_export.cpp: `moce export`, the chosen path through a MoCE / TokenMoE model (or a dense MAE's encoder) as a plain
// ViT in safetensors with timm's names: the flags, then moce::exporter::run_export (moce/export/export.h).
//
//   moce export --model runs/moce/weights.safetensors --experts auto --data DOWNSTREAM_DIR --out runs/moce/vit.safetensors
//   moce export --model runs/tokenmoe/weights.safetensors --experts 3,5 --out runs/tokenmoe/vit.safetensors
//   moce export --model runs/mae/weights.safetensors --out runs/mae/vit.safetensors
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/device.h"
#include "moce/export/export.h"

namespace moce {

int cmd_export(int argc, char** argv) {
  Args a("export", "Write the chosen experts' path through a MoCE / TokenMoE model, or a dense MAE's encoder, as a plain\n"
                   "ViT encoder (timm names, safetensors). The exported MLP is expert(x) alone: the routed model scales\n"
                   "it by the gate value G_e(x) (top-1, not renormalised); --data reports that scale.");
  a.add("model", "", "a moce train output (moce, tokenmoe or dense) or a moce pretrain weights file (required)")
      .add("experts", "auto", "auto (MoCE: moce search on --data) or one expert per MoE layer in block order, e.g. 3,5")
      .add("data", "", "downstream training images: what auto searches on; with them the mean gate of each chosen expert")
      .add("out", "", "the .safetensors to write (required)")
      .add("features-checkpoint", "", "MoCE: the dense MAE the clusters were made with (default: the run's --init)")
      .add("pool", "token", "the ViT's global pool recorded in its config: token (timm's default) or norm_avg")
      .add("search-out", "", "with auto: search.json's path (default: <out without .safetensors>.search.json)")
      .add("classes", "", "of --data, only these classes: names or indices, comma-separated (as moce finetune)")
      .add("limit", "0", "use only the first N images of --data (0 = all; after --classes and --per-class)")
      .add("per-class", "0", "use only the first N images of each class of --data (0 = all)")
      .add("batch", "128", "images per batch")
      .add("workers", "2", "data loader threads")
      .add("device", "cpu", "cpu, or cuda / cuda:N: the passes over --data on that GPU");
  if (!a.parse(argc, argv, 2)) return 0;
  exporter::ExportOptions o;
  o.model_file = a.str("model");
  o.experts = a.str("experts");
  o.data = a.str("data");
  o.out = a.str("out");
  o.features_checkpoint = a.str("features-checkpoint");
  o.pool = a.str("pool");
  o.search_json = a.str("search-out");
  o.limit = a.i64("limit");
  o.per_class = a.i64("per-class");
  o.classes = a.str("classes");
  o.batch = a.i64_at_least("batch", 1);
  o.workers = int(a.i64_at_least("workers", 0));
  o.device = device_from_flag(a.str("device"));
  exporter::run_export(o);
  return 0;
}

}  // namespace moce
