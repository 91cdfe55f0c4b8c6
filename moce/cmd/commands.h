// commands.h: the subcommands of the `moce` program, each `int cmd_<name>(argc, argv)` with argv[1] the command's
// name and its flags from argv[2]; they parse the flags and call the library. Errors throw eng::Error (one line),
// which main.cpp prints. Tests call them as the binary does.
#pragma once

namespace moce {

int cmd_pretrain(int argc, char** argv);  // cmd_pretrain.cpp: MAE pre-training (moce/train/pretrain.h)
int cmd_eval_mae(int argc, char** argv);  // cmd_eval_mae.cpp: evaluation of a pre-trained MAE (moce/eval/report.h)
int cmd_cluster(int argc, char** argv);   // cmd_cluster.cpp: MoCE stage one, clustering (moce/cluster/command.h)
int cmd_train(int argc, char** argv);     // cmd_train.cpp: MoCE / TokenMoE / dense training (moce/train/pretrain.h)
int cmd_routing(int argc, char** argv);   // cmd_routing.cpp: routing heatmaps and figures (moce/train/routing_analysis.h)
int cmd_rank_blocks(int argc, char** argv);  // cmd_rank_blocks.cpp: which blocks get experts (moce/train/rank_blocks.h)
int cmd_search(int argc, char** argv);    // cmd_search.cpp: MoCE's expert search for a downstream task (moce/search/search.h)
int cmd_export(int argc, char** argv);    // cmd_export.cpp: the chosen sub-model as a plain ViT (moce/export/export.h)
int cmd_finetune(int argc, char** argv);  // cmd_finetune.cpp: downstream fine-tuning, the paper's protocol (moce/finetune/finetune.h)
int cmd_linprobe(int argc, char** argv);  // cmd_linprobe.cpp: linear probe on frozen features (moce/finetune/linprobe.h)

}  // namespace moce
