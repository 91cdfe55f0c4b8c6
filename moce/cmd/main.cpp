// main.cpp: the `moce` command-line program.
//
//   moce pretrain ...   MAE pre-training (cmd_pretrain.cpp)
//   moce eval-mae ...   reconstruction PSNR, PNG grid, k-NN and linear-probe accuracy (cmd_eval_mae.cpp)
//   moce cluster ...    MoCE stage one: feature bank, balanced Sinkhorn clustering (cmd_cluster.cpp)
//   moce train ...      MoCE / TokenMoE / dense training from a dense MAE (cmd_train.cpp)
//   moce routing ...    class x expert routing of a trained MoCE / TokenMoE model (cmd_routing.cpp)
//   moce rank-blocks ... the encoder blocks with the largest MLP gradient, for --moe-blocks (cmd_rank_blocks.cpp)
//   moce search ...     MoCE's expert search for a downstream data set (cmd_search.cpp)
//   moce export ...     the chosen experts' path (or a dense MAE's encoder) as a plain ViT, timm names (cmd_export.cpp)
//   moce finetune ...   downstream fine-tuning: lr grid on a validation split, seeds at the best lr (cmd_finetune.cpp)
//   moce linprobe ...   linear probe of a ViT encoder on frozen downstream features (cmd_linprobe.cpp)
// `moce <command> --help` lists every flag with its default. Errors print one line and exit with status 1.
#include <cstdio>
#include <cstring>
#include <exception>

#include "moce/cmd/commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"pretrain", moce::cmd_pretrain, "pre-train a masked autoencoder"},
    {"eval-mae", moce::cmd_eval_mae, "evaluate a pre-trained MAE: PSNR, reconstructions PNG, k-NN, linear probe"},
    {"cluster", moce::cmd_cluster, "cluster the images by MAE features (MoCE stage one): bank, centroids, assignments"},
    {"train", moce::cmd_train, "continue a dense MAE as MoCE, TokenMoE or dense (MAE*): experts, gates, losses"},
    {"routing", moce::cmd_routing, "where a trained MoCE / TokenMoE model routes each class: heatmaps, NMI, loads"},
    {"rank-blocks", moce::cmd_rank_blocks, "rank the encoder blocks by MLP gradient magnitude; the top ones as --moe-blocks"},
    {"search", moce::cmd_search, "MoCE's expert search: the cluster most downstream images fall in names the experts"},
    {"export", moce::cmd_export, "write the chosen experts' path (or a dense MAE's encoder) as a plain ViT (timm names)"},
    {"finetune", moce::cmd_finetune, "fine-tune a ViT on a downstream task: lr grid on val, then seeds; test top-1 mean, std"},
    {"linprobe", moce::cmd_linprobe, "linear probe of a ViT encoder on frozen downstream features (token or avg pool)"},
};

void usage() {
  std::printf("usage: moce <command> [flags]   (moce <command> --help for its flags)\n\ncommands:\n");
  for (const auto& c : kCommands) std::printf("  %-12s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 1 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc, argv);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
  usage();
  return 1;
}
