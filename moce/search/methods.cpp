// methods.cpp: MoCE's rule, k-NN and LogME over the candidate sub-models, search.json and the report (see the header).
#include "moce/search/methods.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "moce/finetune/finetune.h"
#include "moce/search/logme.h"

namespace moce::search {

using eng::Tensor;
using nlohmann::json;

namespace {
const std::vector<std::string> kMethods = {"moce", "knn", "logme"};  // "all": the ones that do not fine-tune
const std::vector<std::string> kEveryMethod = {"moce", "knn", "logme", "early-stop", "exhaustive"};
}

std::vector<std::string> parse_methods(const std::string& text) {
  if (text == "all") return kMethods;
  if (text == "every") return kEveryMethod;
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string name = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    ENG_CHECK(std::find(kEveryMethod.begin(), kEveryMethod.end(), name) != kEveryMethod.end(),
              "--method {}: '{}' is not a search method (moce, knn, logme, early-stop, exhaustive, a comma list of "
              "them, all or every)", text, name);
    ENG_CHECK(std::find(out.begin(), out.end(), name) == out.end(), "--method {}: '{}' is given twice", text, name);
    out.push_back(name);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

MethodResult choose_by_score(const std::string& method, const std::string& score_name,
                             const std::vector<Candidate>& candidates, const CandidateScore& score, const Cost& shared) {
  ENG_CHECK(!candidates.empty(), "search --method {}: no candidate sub-model to score", method);
  const CostClock clock;
  MethodResult r;
  r.method = method;
  r.score_name = score_name;
  r.shared = shared;
  for (size_t i = 0; i < candidates.size(); i++) {
    r.scores.push_back(score(i, candidates[i]));
    if (r.choice < 0 || r.scores.back() > r.scores[size_t(r.choice)]) r.choice = int64_t(i);
  }
  r.own = clock.elapsed();
  return r;
}

Split stratified_split(const std::vector<int64_t>& labels, double val_fraction, uint64_t seed) {
  ENG_CHECK(val_fraction > 0 && val_fraction < 1, "--val-fraction must lie in (0, 1), got {}", val_fraction);
  const int64_t n = int64_t(labels.size());
  std::map<int64_t, int64_t> size_of, val_of;
  for (int64_t l : labels) size_of[l]++;
  for (const auto& [label, count] : size_of)
    val_of[label] = count < 2 ? 0 : std::clamp<int64_t>(std::llround(val_fraction * double(count)), 1, count - 1);
  std::vector<char> is_val(size_t(n), 0);
  if (n > 0) {
    const std::vector<int64_t> order = eng::Generator(seed).permutation(n).to_vector<int64_t>();
    for (int64_t i : order)
      if (val_of[labels[size_t(i)]] > 0) {
        val_of[labels[size_t(i)]]--;
        is_val[size_t(i)] = 1;
      }
  }
  Split s;
  for (int64_t i = 0; i < n; i++) (is_val[size_t(i)] ? s.val : s.train).push_back(i);
  return s;
}

double knn_split_top1(const Tensor& features, const Tensor& labels, int64_t num_classes, const Split& split,
                      const KnnOptions& options) {
  const Tensor train = Tensor::from_vector(split.train, {int64_t(split.train.size())});
  const Tensor val = Tensor::from_vector(split.val, {int64_t(split.val.size())});
  eng::NoGradGuard no_grad;
  return knn_classify(eng::index_select(features, 0, train), eng::index_select(labels, 0, train),
                      eng::index_select(features, 0, val), eng::index_select(labels, 0, val), num_classes, options)
      .top1;
}

MethodsReport run_search_methods(const TrainedModel& model, std::shared_ptr<const data::Dataset> ds,
                                 const std::string& data_name, const std::vector<std::string>& methods,
                                 const SearchOptions& search_options, const MethodOptions& options) {
  ENG_CHECK(model.method == TrainMethod::Moce,
            "search needs a MoCE model (its clusters choose the experts); this is a {} model", train_method_name(model.method));
  ENG_CHECK(ds && ds->size() > 0, "search: --data {} holds no images", data_name);
  ENG_CHECK(!methods.empty(), "search: no --method given");
  auto asked = [&](const char* m) { return std::count(methods.begin(), methods.end(), m) > 0; };
  if (asked("knn") || asked("logme") || asked("early-stop") || asked("exhaustive"))
    ENG_CHECK(ds->num_classes() >= 2, "search --method {}: --data {} has {} class; the methods other than moce score how "
              "well a candidate separates the classes: give at least two", fmt::join(methods, ","), data_name,
              ds->num_classes());
  if (asked("early-stop") || asked("exhaustive"))
    ENG_CHECK(options.early_steps > 0 && options.full_steps > 0 && options.finetune_lr > 0 &&
                  std::isfinite(options.finetune_lr) && options.finetune_batch > 0,
              "search --method early-stop/exhaustive: --early-steps ({}), --full-steps ({}), --finetune-lr ({}) and "
              "--finetune-batch ({}) must be positive", options.early_steps, options.full_steps, options.finetune_lr,
              options.finetune_batch);
  MethodsReport r;
  r.data = data_name;
  r.classes = ds->num_classes();
  r.candidates = candidate_paths(model);
  CandidateFeatures cf;
  Split split;
  std::shared_ptr<const data::Dataset> ft_train, ft_val;  // early-stop and exhaustive: the split's two parts
  auto need_features = [&] {
    if (!cf.features.empty()) return;
    cf = candidate_features(model, r.candidates, ds, {search_options.batch, search_options.workers}, options.progress_every);
    r.features = cf.cost;
    r.shared_blocks = cf.shared_blocks;
    r.images = cf.labels.numel();
    const std::vector<int64_t> labels = cf.labels.to_vector<int64_t>();
    ENG_CHECK(std::set<int64_t>(labels.begin(), labels.end()).size() >= 2,
              "search --method knn/logme: the images of --data {} hold one label only; give at least two classes", data_name);
  };
  for (const std::string& m : methods) {
    if (m == "moce") {
      const CostClock clock;
      r.moce = search_experts(model, ds, data_name, search_options);
      MethodResult mr;
      mr.method = "moce";
      mr.score_name = "votes";
      mr.choice = candidate_of_path(r.candidates, r.moce->experts);
      ENG_CHECK(mr.choice >= 0, "search: the rule's experts {} are no cluster's path", path_text(r.moce->experts));
      // A candidate's votes: the most any of its clusters got (the rule picks the cluster, so its candidate).
      for (const Candidate& c : r.candidates) {
        int64_t most = 0;
        for (int64_t k : c.clusters) most = std::max(most, r.moce->votes[size_t(k)]);
        mr.scores.push_back(double(most));
      }
      mr.own = clock.elapsed();
      r.images = r.moce->images;
      r.methods.push_back(mr);
    } else if (m == "knn") {
      need_features();
      split = stratified_split(cf.labels.to_vector<int64_t>(), options.val_fraction, options.split_seed);
      ENG_CHECK(!split.val.empty() && !split.train.empty(), "search --method knn: --data {} has too few images ({}) for "
                "a {:.0f}% validation split of each class", data_name, r.images, 100 * options.val_fraction);
      r.knn_train = int64_t(split.train.size());
      r.knn_val = int64_t(split.val.size());
      r.knn_k = options.knn.k;
      r.methods.push_back(choose_by_score(
          "knn", "knn_top1", r.candidates,
          [&](size_t i, const Candidate&) { return knn_split_top1(cf.features[i], cf.labels, r.classes, split, options.knn); },
          cf.cost));
    } else if (m == "logme") {
      need_features();
      r.methods.push_back(choose_by_score(
          "logme", "logme", r.candidates,
          [&](size_t i, const Candidate&) { return logme(cf.features[i], cf.labels, "search --method logme").score; },
          cf.cost));
    } else if (m == "early-stop" || m == "exhaustive") {
      if (!ft_train) {  // once for both fine-tuning methods; the labels from the data set itself (no feature pass)
        std::vector<int64_t> labels(size_t(ds->size()));
        for (int64_t i = 0; i < ds->size(); i++) labels[size_t(i)] = ds->label(i);
        const Split ft_split = stratified_split(labels, options.val_fraction, options.split_seed);
        ENG_CHECK(!ft_split.val.empty() && !ft_split.train.empty(), "search --method {}: --data {} has too few images "
                  "({}) for a {:.0f}% validation split of each class", m, data_name, ds->size(), 100 * options.val_fraction);
        r.knn_train = int64_t(ft_split.train.size());
        r.knn_val = int64_t(ft_split.val.size());
        if (r.images == 0) r.images = ds->size();
        ft_train = std::make_shared<data::SubsetDataset>(ds, ft_split.train);
        ft_val = std::make_shared<data::SubsetDataset>(ds, ft_split.val);
      }
      const auto& train = ft_train;
      const auto& val = ft_val;
      const int64_t steps = m == "early-stop" ? options.early_steps : options.full_steps;
      (m == "early-stop" ? r.early_steps : r.full_steps) = steps;
      r.finetune_lr = options.finetune_lr;
      r.methods.push_back(choose_by_score(
          m, "finetune_val_top1", r.candidates,
          [&](size_t i, const Candidate& c) {
            const model::VisionTransformer encoder = dense_vit_of(model, c.experts, model::VitPool::NormAvg);
            finetune::RunOptions ro;
            ro.lr = options.finetune_lr;
            ro.seed = options.finetune_seed;
            ro.steps = steps;
            ro.batch = options.finetune_batch;
            ro.workers = search_options.workers;
            ro.log_every = options.finetune_log_every;
            ro.tag = fmt::format("{} candidate {}/{} (experts {})", m, i + 1, r.candidates.size(), path_text(c.experts));
            return finetune::finetune_once(encoder, train, val, r.classes, ro).top1;
          },
          Cost{}));
    } else {
      ENG_FAIL("search: unknown method '{}'", m);
    }
  }
  return r;
}

namespace {
// The lowest score's candidate (the first on a tie): exhaustive search's worst expert.
int64_t worst_candidate(const std::vector<double>& scores) {
  return int64_t(std::min_element(scores.begin(), scores.end()) - scores.begin());
}
}  // namespace

json methods_to_json(const MethodsReport& r, const std::string& model_file) {
  json j = r.moce ? search_to_json(*r.moce, model_file)
                  : json{{"format", "moce-search"}, {"model", model_file}, {"data", r.data}, {"images", r.images}};
  json candidates = json::array(), methods = json::object();
  for (const Candidate& c : r.candidates) candidates.push_back({{"experts", c.experts}, {"clusters", c.clusters}});
  for (const MethodResult& m : r.methods) {
    const Candidate& c = r.candidates[size_t(m.choice)];
    json e = {{"choice", m.choice},
              {"experts", c.experts},
              {"clusters", c.clusters},
              {"score", m.score_name},
              {"scores", m.scores},
              {"cpu_seconds", m.total().cpu_seconds},
              {"wall_seconds", m.total().wall_seconds},
              {"shared_cpu_seconds", m.shared.cpu_seconds},
              {"shared_wall_seconds", m.shared.wall_seconds}};
    if (m.method == "knn")
      e["split"] = {{"train", r.knn_train}, {"val", r.knn_val}, {"k", std::min(r.knn_k, r.knn_train)}};
    if (m.method == "early-stop" || m.method == "exhaustive") {
      e["split"] = {{"train", r.knn_train}, {"val", r.knn_val}};
      e["finetune"] = {{"lr", r.finetune_lr}, {"steps", m.method == "early-stop" ? r.early_steps : r.full_steps}};
    }
    if (m.method == "exhaustive") {
      const int64_t worst = worst_candidate(m.scores);
      e["worst"] = worst;
      e["worst_experts"] = r.candidates[size_t(worst)].experts;
    }
    methods[m.method] = e;
  }
  j["candidates"] = candidates;
  j["classes"] = r.classes;
  j["shared_blocks"] = r.shared_blocks;
  j["methods"] = methods;
  return j;
}

std::string methods_summary(const MethodsReport& r, int64_t top) {
  std::string s;
  if (r.moce) s += search_summary(*r.moce, top);
  size_t clusters = 0;
  for (const Candidate& c : r.candidates) clusters += c.clusters.size();
  s += fmt::format("{} candidate sub-models (the distinct expert paths the gates give the {} clusters)\n",
                   r.candidates.size(), clusters);
  for (const MethodResult& m : r.methods) {
    const Candidate& c = r.candidates[size_t(m.choice)];
    s += fmt::format("{}: chose candidate {} (experts {}; clusters {}), by {}\n", m.method, m.choice, path_text(c.experts),
                     path_text(c.clusters), m.score_name);
    for (size_t i = 0; i < r.candidates.size(); i++)
      s += fmt::format("  {} candidate {:>3} experts {:<12} {:.6g}\n", int64_t(i) == m.choice ? "*" : " ", i,
                       path_text(r.candidates[i].experts), m.scores[i]);
    if (m.method == "exhaustive") {
      const int64_t worst = worst_candidate(m.scores);
      s += fmt::format("  the best: candidate {} ({:.4f}); the worst: candidate {} (experts {}, {:.4f})\n", m.choice,
                       m.scores[size_t(m.choice)], worst, path_text(r.candidates[size_t(worst)].experts),
                       m.scores[size_t(worst)]);
    }
    s += fmt::format("  cost: {:.2f} CPU-s, {:.2f} s wall", m.total().cpu_seconds, m.total().wall_seconds);
    if (m.shared.wall_seconds > 0)
      s += fmt::format(" (of which the candidates' feature pass, shared with the other feature methods: {:.2f} CPU-s, "
                       "{:.2f} s wall; {} blocks run once for all)", m.shared.cpu_seconds, m.shared.wall_seconds,
                       r.shared_blocks);
    s += "\n";
  }
  return s;
}

}  // namespace moce::search
