// methods.h: the paper's search methods side by side (its section 4.3, Table 5) over the candidate sub-models
// (candidates.h): MoCE's rule (search.h), k-NN accuracy of each candidate's features on a fixed-seed split of the
// downstream training images, and LogME (logme.h) of each candidate's features with the labels. Each method names its
// choice, every candidate's score and its cost (process CPU seconds and wall seconds).
//
// The methods that fine-tune (moce/finetune's finetune_once, MAE's fine-tuning classifier on the candidate's dense
// ViT): **early-stop** fine-tunes every candidate for a short budget (`early_steps`) on the k-NN's split of the
// downstream training images and keeps the best val top-1; **exhaustive** fine-tunes every candidate for the full
// budget (`full_steps`) and reports the best and the worst (the paper's Table 5 upper and lower bounds). Both use
// one learning rate and one seed for every candidate (`finetune_lr`, `finetune_seed`), not the protocol's whole lr
// grid: a grid per candidate would multiply the cost by its length; `moce finetune` runs the protocol on the choice.
// A method is a CandidateScore, one number per candidate (higher is better), and choose_by_score times it and takes
// the best.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "moce/common/clock.h"
#include "moce/eval/knn.h"
#include "moce/search/candidates.h"
#include "moce/search/search.h"

namespace moce::search {

// "moce", "knn", "logme", "early-stop", "exhaustive", a comma list of them, or "all" (moce, knn, logme: the ones
// that do not fine-tune) or "every" (all five); in the order of the list given, no repeats.
// Throws naming --method otherwise.
std::vector<std::string> parse_methods(const std::string& text);

// A method's score of candidate `index` (higher is better).
using CandidateScore = std::function<double(size_t index, const Candidate& candidate)>;

struct MethodResult {
  std::string method;
  std::string score_name;      // what the scores are ("knn_top1", "logme", "votes")
  int64_t choice = -1;         // index into the candidates
  std::vector<double> scores;  // one per candidate
  Cost own;                    // the method's own work (its scoring calls, or for moce the whole rule)
  Cost shared;                 // work it needs that other methods share (the candidates' feature pass)
  Cost total() const { return own + shared; }
};

// Scores every candidate with `score`, timed; the choice is the highest score (the first candidate on a tie).
MethodResult choose_by_score(const std::string& method, const std::string& score_name,
                             const std::vector<Candidate>& candidates, const CandidateScore& score, const Cost& shared);

// A stratified split of row indices by label: per class, round(fraction x its size) rows (at least one when the class
// has two or more, never all of them) go to `val`, chosen by a permutation of all rows from `seed`; the rest to
// `train`. Both ascending.
struct Split {
  std::vector<int64_t> train, val;
};
Split stratified_split(const std::vector<int64_t>& labels, double val_fraction, uint64_t seed);

struct MethodOptions {
  KnnOptions knn;             // k = 20, T = 0.07 (DINO's k-NN)
  double val_fraction = 0.2;  // k-NN: the held-out share of the downstream training images
  uint64_t split_seed = 0;
  int64_t progress_every = 10;  // batches between the feature pass's progress lines (0: none)
  // early-stop and exhaustive: fine-tuning each candidate on split.train, scored on split.val
  int64_t early_steps = 30, full_steps = 120;
  double finetune_lr = 1e-2;  // one lr for all candidates (the middle of the paper's grid)
  uint64_t finetune_seed = 0;
  int64_t finetune_batch = 64;
  int finetune_log_every = 10;  // a progress line every N steps (0: none)
};

// k-NN top-1 of features [N, D] trained on split.train, tested on split.val.
double knn_split_top1(const eng::Tensor& features, const eng::Tensor& labels, int64_t num_classes, const Split& split,
                      const KnnOptions& options);

struct MethodsReport {
  std::string data;
  int64_t images = 0, classes = 0;
  std::vector<Candidate> candidates;
  std::optional<SearchResult> moce;  // MoCE's rule, when asked
  std::vector<MethodResult> methods;  // in the order asked
  int64_t shared_blocks = 0;          // blocks the feature pass ran once for all candidates
  Cost features;                      // the candidates' feature pass (zero when no method needed it)
  int64_t knn_train = 0, knn_val = 0, knn_k = 0;  // the k-NN split's sizes and k (also the fine-tuning methods')
  int64_t early_steps = 0, full_steps = 0;        // the fine-tuning methods' budgets (when they ran)
  double finetune_lr = 0;
};

// Runs the methods on `ds` (the downstream training images). Throws one line for a model that is not MoCE, an empty
// data set, and (k-NN, LogME) fewer than two classes or too few images for the split.
MethodsReport run_search_methods(const TrainedModel& model, std::shared_ptr<const data::Dataset> ds,
                                 const std::string& data_name, const std::vector<std::string>& methods,
                                 const SearchOptions& search_options, const MethodOptions& options);

// search.json: the moce rule's format (search_to_json) when it ran, plus "candidates" and "methods" ({name: {choice,
// experts, clusters, score, scores, cpu_seconds, wall_seconds, shared_cpu_seconds, shared_wall_seconds}}).
nlohmann::json methods_to_json(const MethodsReport& r, const std::string& model_file);
// The printed report: MoCE's rule's (search_summary, the top `top` clusters) when it ran, then each method's choice,
// every candidate's score and the cost.
std::string methods_summary(const MethodsReport& r, int64_t top = 5);

}  // namespace moce::search
