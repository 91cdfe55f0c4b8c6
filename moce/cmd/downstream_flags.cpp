// downstream_flags.cpp: the shared flags of moce finetune and moce linprobe.
#include "moce/cmd/downstream_flags.h"

namespace moce {

void add_downstream_flags(Args& a) {
  a.add("model", "", "the encoder: a moce export (ViT), a dense MAE (moce pretrain checkpoint or weights), a "
                     "TokenMoE model (moce train --method tokenmoe) or a timm-style ViT safetensors (required)")
      .add("heads", "0", "timm-style files only: attention heads (0 = embed_dim / 64)")
      .add("capacity-factor", "1.5", "TokenMoE models only: expert capacity factor (V-MoE's fine-tuning value)")
      .add("data", "", "downstream training images: an image folder, fashion-mnist or cifar10-bin:DIR (required)")
      .add("test-data", "", "test images (fashion-mnist / cifar10-bin: their test split); empty: carve --test-fraction")
      .add("test-fraction", "0.2", "without --test-data: the share of --data held out as test (seeded by --split-seed)")
      .add("val-fraction", "0.2", "the share of the training images held out for the lr choice")
      .add("split-seed", "0", "seed of the test and validation splits")
      .add("classes", "", "keep only these classes, names or indices, comma-separated (e.g. Sandal,Sneaker,\"Ankle boot\")")
      .add("limit", "0", "the first N training images after --classes (0 = all)")
      .add("limit-test", "0", "the first N test images (0 = all)")
      .add("per-class", "0", "the first N training images of each class (0 = all; an image folder is stored class by "
                             "class, so --limit alone keeps its first classes)")
      .add("per-class-test", "0", "the first N test images of each class (0 = all; with --test-data)")
      .add("workers", "2", "data loader threads")
      .add("out", "", "output folder (required)");
}

void read_downstream_flags(const Args& a, std::string& model_file, int64_t& heads, finetune::DownstreamOptions& data,
                           std::string& out) {
  model_file = a.str("model");
  heads = a.i64_at_least("heads", 0);
  data.data = a.str("data");
  data.test_data = a.str("test-data");
  data.test_fraction = a.f64("test-fraction");
  data.val_fraction = a.f64("val-fraction");
  data.split_seed = uint64_t(a.i64_at_least("split-seed", 0));
  data.classes = a.str("classes");
  data.limit = a.i64("limit");
  data.limit_test = a.i64("limit-test");
  data.per_class = a.i64("per-class");
  data.per_class_test = a.i64("per-class-test");
  out = a.str("out");
}

}  // namespace moce
