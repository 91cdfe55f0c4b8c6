// cmd_train.cpp: `moce train`, continuing a dense MAE as MoCE, TokenMoE or dense (the paper's MAE*): the flags, then
// moce::pretrain with the method's options (moce/train/pretrain.h, moce/train/expert_training.h).
//
//   moce train --method moce --init runs/mae/weights.safetensors --clusters runs/clusters --data DIR --out runs/moce
//   moce train --method tokenmoe --init runs/mae/weights.safetensors --data DIR --out runs/tokenmoe
//   moce train --resume runs/moce                              (continues bit for bit)
#include "moce/cmd/commands.h"
#include "moce/cmd/training_flags.h"

namespace moce {

int cmd_train(int argc, char** argv) {
  Args a("train", "Continue a dense MAE with expert layers: MoCE (cluster-conditional gate), TokenMoE (V-MoE's token "
                  "gate) or dense (the MAE* baseline), for the same steps.");
  a.add("method", "moce", "moce | tokenmoe | dense")
      .add("init", "", "the dense MAE to continue: a moce pretrain weights.safetensors or checkpoint (required)")
      .add("clusters", "", "--method moce: the `moce cluster` output folder of the same training data (required)")
      .add("moe-blocks", "", "encoder blocks (0-based, comma-separated) whose MLP becomes an expert layer (default: "
                             "moce the last two, depth-2,depth-1; tokenmoe the last two even-numbered 1-based, depth-3,depth-1)")
      .add("experts", "8", "experts per expert layer")
      .add("top-k", "1", "experts each image (moce) or token (tokenmoe) goes to")
      .add("capacity-factor", "1.05", "tokenmoe: expert capacity ceil(tokens*k*cf/experts), rounded up to a multiple of 4")
      .add("noise-std", "-1", "std of the gate noise in training (< 0: 1/experts)")
      .add("perturbation", "1e-3", "each expert starts as the dense MLP plus N(0, s^2) noise of this std")
      .add("imbalance", "per-image", "reading of the imbalance loss (Eqn. 5): per-image (ours) or per-expert")
      .add("importance-weight", "0.01", "weight of the importance loss (both methods)")
      .add("load-weight", "0.01", "weight of the load loss (both methods)")
      .add("imbalance-weight", "0.01", "moce: weight of the imbalance loss")
      .add("distill-weight", "0.01", "moce: weight of the distillation loss from the frozen --init MAE (0 = off)");
  add_training_flags(a, "", "runs/train", "1");
  if (!a.parse(argc, argv, 2)) return 0;
  PretrainOptions o;
  PretrainSession session;
  if (!a.given("resume")) {
    // Before the loop's flags: their validation reads the method (a missing --base-lr means "from --init").
    o.method = a.str("method");
    ENG_CHECK(o.method != "mae", "--method mae: pre-training from scratch is `moce pretrain`");
    parse_train_method(o.method);  // names --method when it is wrong, before anything is read
  }
  read_training_flags(a, o, session);
  if (!a.given("resume")) {
    o.init = a.str("init");
    o.clusters = a.str("clusters");
    if (!a.str("moe-blocks").empty()) o.experts.moe_blocks = parse_block_list(a.str("moe-blocks"));
    o.experts.num_experts = a.i64_at_least("experts", 1);
    o.experts.top_k = a.i64_at_least("top-k", 1);
    o.experts.capacity_factor = a.f64("capacity-factor");
    o.experts.noise_std = a.f64("noise-std");
    o.experts.perturbation = a.f64_at_least("perturbation", 0);
    o.experts.imbalance = a.str("imbalance");
    o.experts.importance_weight = a.f64("importance-weight");
    o.experts.load_weight = a.f64("load-weight");
    o.experts.imbalance_weight = a.f64("imbalance-weight");
    o.experts.distill_weight = a.f64("distill-weight");
    if (o.method != "moce") o.experts.imbalance_weight = o.experts.distill_weight = 0;  // the paper gives them to MoCE
  }
  return pretrain(o, session).status;
}

}  // namespace moce
