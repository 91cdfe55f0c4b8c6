// candidates.h: the candidate sub-models of a MoCE model for a downstream task (the paper's section 4.3 "Search
// method", its Table 5): the distinct expert paths that the gates (evaluation mode, no noise) give to at least one
// cluster, each the dense ViT of that path; and their features over the downstream images in one pass, the blocks
// before the first MoE layer (the same in every candidate) computed once per batch for all of them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "engine/tensor.h"
#include "model/vit.h"
#include "moce/eval/features.h"
#include "moce/train/expert_training.h"
#include "moce/common/clock.h"

namespace moce::search {

// One candidate: an expert per MoE layer (block order) and the clusters whose gates choose exactly that path.
struct Candidate {
  std::vector<int64_t> experts;
  std::vector<int64_t> clusters;  // ascending
};

// Every cluster's path (experts_of_cluster on each centroid), grouped: one candidate per distinct path, in the order
// of their lowest cluster. Throws (naming the model's method) for a model without clusters.
std::vector<Candidate> candidate_paths(const TrainedModel& model);
// The candidate whose path is `experts`, or -1.
int64_t candidate_of_path(const std::vector<Candidate>& candidates, const std::vector<int64_t>& experts);
// "3,6": a path as --experts takes it.
std::string path_text(const std::vector<int64_t>& experts);

// The dense ViT through the chosen experts (one per MoE layer, in block order; none for a dense model), with a copy of
// every tensor (the model is left as it is). pool: token or norm_avg (both keep the encoder's final norm). `moce
// export` writes this model (exporter::dense_vit_of is this function).
model::VisionTransformer dense_vit_of(const TrainedModel& model, const std::vector<int64_t>& experts, model::VitPool pool);

struct CandidateFeatures {
  std::vector<eng::Tensor> features;  // per candidate: f32 [N, D], norm_avg (the MAE's features), dataset order
  eng::Tensor labels;                 // i64 [N]
  int64_t skipped = 0;                // corrupt images the loader replaced
  int64_t shared_blocks = 0;          // encoder blocks run once per batch for all candidates (those before the first MoE)
  Cost cost;                          // the whole pass: the ViTs' construction, loading, every candidate's blocks
};

// The features of every candidate's dense ViT (dense_vit_of, norm_avg: the patch tokens after the final norm,
// averaged, as the MAE's features) over `ds` through the evaluation pipeline at the model's image size, on the CPU.
// Each candidate's features equal dense_vit_of(model, c.experts, NormAvg).features(batch) bit for bit. A progress
// line (images, img/s, ETA) every `progress_every` batches when it is > 0.
CandidateFeatures candidate_features(const TrainedModel& model, const std::vector<Candidate>& candidates,
                                     std::shared_ptr<const data::Dataset> ds, const ExtractOptions& options,
                                     int64_t progress_every = 0);

}  // namespace moce::search
