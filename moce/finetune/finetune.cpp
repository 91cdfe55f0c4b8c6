// finetune.cpp: one fine-tuning run, the learning-rate grid and seeds of the protocol, and `moce finetune`'s files.
#include "moce/finetune/finetune.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <sstream>
#include <tuple>

#include <fmt/format.h>

#include "data/loader.h"
#include "data/transforms.h"
#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "moce/common/clock.h"
#include "moce/common/plot.h"
#include "moce/common/run_folder.h"
#include "moce/eval/features.h"
#include "moce/finetune/model_file.h"

namespace moce::finetune {

using eng::Tensor;
using nlohmann::json;

const std::vector<double>& paper_lr_grid() {
  static const std::vector<double> grid = {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1};
  return grid;
}

std::vector<double> parse_lr_grid(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    size_t used = 0;
    double v = std::numeric_limits<double>::quiet_NaN();
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ENG_CHECK(used > 0 && used == item.size(), "--lrs '{}': '{}' is not a number", text, item);
    ENG_CHECK(std::isfinite(v) && v > 0, "--lrs '{}': learning rate {} must be positive", text, item);
    out.push_back(v);
  }
  ENG_CHECK(!out.empty(), "--lrs '{}': no learning rate given", text);
  return out;
}

namespace {

double cpu_now() { return double(std::clock()) / CLOCKS_PER_SEC; }

// Fine-tuning's augmentation at the model's size: resize (when the images are another size), random crop of the
// zero-padded image, flip, then ImageNet normalisation as the encoder was trained with.
data::Pipeline train_pipeline(int64_t size, bool augment) {
  data::Pipeline p;
  p.add(std::make_shared<data::ResizeShorter>(size)).add(std::make_shared<data::CenterCrop>(size, size));
  if (augment)
    p.add(std::make_shared<data::RandomCrop>(size, std::max<int64_t>(1, size / 8)))
        .add(std::make_shared<data::RandomHorizontalFlip>(0.5));
  p.add(std::make_shared<data::Normalize>());
  return p;
}

// Top-1 and mean cross-entropy of the classifier over `ds` (evaluation pipeline, no gradient).
std::pair<double, double> evaluate(const model::VisionTransformer& m, std::shared_ptr<const data::Dataset> ds,
                                   int64_t num_classes, const RunOptions& o) {
  FeatureSet logits = extract_features([&](const Tensor& imgs) { return m.forward(imgs); }, ds,
                                       data::eval_pipeline(m.config().img_size), ExtractOptions{o.eval_batch, o.workers});
  std::vector<int64_t> pred = eng::argmax(logits.features, 1).to_vector<int64_t>();
  std::vector<int64_t> labels = checked_labels(logits.labels, num_classes, "fine-tuning evaluation");
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); i++) correct += pred[i] == labels[i];
  double loss = eng::cross_entropy(logits.features, logits.labels).item();
  return {double(correct) / double(labels.size()), loss};
}

std::string lr_str(double lr) { return fmt::format("{:g}", lr); }

}  // namespace

RunResult finetune_once(const model::VisionTransformer& encoder, std::shared_ptr<const data::Dataset> train,
                        std::shared_ptr<const data::Dataset> eval, int64_t num_classes, const RunOptions& o) {
  ENG_CHECK(o.steps > 0, "--steps {} must be positive", o.steps);
  ENG_CHECK(o.batch > 0, "--batch {} must be positive", o.batch);
  ENG_CHECK(std::isfinite(o.lr) && o.lr > 0, "fine-tuning: learning rate {} must be positive", o.lr);
  ENG_CHECK(num_classes >= 2, "fine-tuning: {} classes, at least 2 needed", num_classes);
  ENG_CHECK(train && train->size() > 0 && eval && eval->size() > 0, "fine-tuning: an empty training or evaluation set");
  check_capacity_factor(o.capacity_factor);
  ENG_CHECK(o.importance_weight >= 0 && o.load_weight >= 0,
            "fine-tuning: auxiliary loss weights (importance {}, load {}) must be >= 0", o.importance_weight,
            o.load_weight);
  ENG_CHECK(encoder.config().in_chans == 3, "fine-tuning: the model takes {} channels; the data sets give 3",
            encoder.config().in_chans);
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = cpu_now();
  model::VisionTransformer m = classifier_from_encoder(encoder, num_classes, model::VitPool::Avg, o.seed);
  const MoeLayers moe = moe_layers(m);
  set_moe_mode(moe, /*training=*/true, o.capacity_factor);
  const experts::AuxLossWeights aux_weights{o.importance_weight, o.load_weight, /*imbalance=*/0.0};
  std::vector<Tensor> params;
  for (auto& [name, t] : m.named_parameters()) params.push_back(t);
  eng::SGD opt(params, eng::SGDOptions{o.lr, o.momentum, o.weight_decay, false});
  const eng::CosineSchedule sched{o.lr, 0.0, 0.0, double(o.steps)};

  data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.shuffle = true;
  lo.drop_last = train->size() >= o.batch;  // a set smaller than one batch trains on all of it each step
  lo.seed = o.seed;
  lo.num_workers = o.workers;
  data::Loader loader(train, train_pipeline(m.config().img_size, o.augment), lo);

  RunResult r;
  auto t_window = std::chrono::steady_clock::now();
  int64_t window_images = 0, window_steps = 0;
  double window_loss = 0, window_aux = 0;
  for (int64_t epoch = 0; int64_t(r.losses.size()) < o.steps && !r.diverged; epoch++) {
    loader.start_epoch(epoch);
    data::Batch b;
    while (int64_t(r.losses.size()) < o.steps && loader.next(b)) {
      const int64_t step = int64_t(r.losses.size());
      for (const auto& layer : moe.layers) layer->set_step(uint64_t(step));  // this step's gate noise
      Tensor loss = eng::cross_entropy(m.forward(b.images), b.labels);
      if (!moe.empty()) {
        Tensor aux = experts::auxiliary_loss(moe.layers, aux_weights);
        r.aux_losses.push_back(aux.defined() ? aux.item() : 0.0);
        window_aux += r.aux_losses.back();
        if (aux.defined()) loss = eng::add(loss, aux);
      }
      const double lv = loss.item();
      if (!std::isfinite(lv)) {
        std::printf("[finetune] %s: non-finite loss at step %lld: diverged (counted as top-1 0)\n", o.tag.c_str(),
                    (long long)step + 1);
        std::fflush(stdout);
        r.diverged = true;
        break;
      }
      opt.zero_grad();
      loss.backward();
      opt.set_lr(sched.lr(double(step)));
      opt.step();
      r.losses.push_back(lv);
      window_images += b.images.size(0);
      window_loss += lv;
      window_steps++;
      const int64_t done = step + 1;
      if (o.log_every > 0 && (done % o.log_every == 0 || done == o.steps)) {
        const double ips = double(window_images) / std::max(seconds_since(t_window), 1e-9);
        const double run_eta = seconds_since(t0) / double(done) * double(o.steps - done);
        std::string plan;
        if (o.plan_total > 0) {
          const int64_t plan_done = o.plan_done + done;
          plan = fmt::format(", all {}", fmt_duration(seconds_since(o.plan_start) / double(plan_done) *
                                                      double(o.plan_total - plan_done)));
        }
        const std::string aux = moe.empty() ? "" : fmt::format(" (aux {:.4f})", window_aux / double(window_steps));
        std::printf("[finetune] %s  step %lld/%lld  loss %.4f%s  lr %.3e  %.1f img/s  ETA %s%s\n", o.tag.c_str(),
                    (long long)done, (long long)o.steps, window_loss / double(window_steps), aux.c_str(),
                    opt.lr(), ips, fmt_duration(run_eta).c_str(), plan.c_str());
        std::fflush(stdout);
        t_window = std::chrono::steady_clock::now();
        window_images = window_steps = 0;
        window_loss = window_aux = 0;
      }
    }
  }
  set_moe_mode(moe, /*training=*/false, o.capacity_factor);
  if (!r.diverged) std::tie(r.top1, r.eval_loss) = evaluate(m, eval, num_classes, o);
  else r.eval_loss = std::numeric_limits<double>::infinity();
  r.seconds = seconds_since(t0);
  r.cpu_seconds = cpu_now() - c0;
  return r;
}

size_t best_grid_point(const std::vector<GridPoint>& grid) {
  ENG_CHECK(!grid.empty(), "fine-tuning: an empty lr grid");
  size_t best = 0;
  for (size_t i = 1; i < grid.size(); i++) {
    const RunResult &g = grid[i].val, &b = grid[best].val;
    if (g.top1 > b.top1 || (g.top1 == b.top1 && g.eval_loss < b.eval_loss)) best = i;
  }
  return best;
}

void check_protocol_options(const ProtocolOptions& o) {
  ENG_CHECK(!o.lrs.empty(), "--lrs: no learning rate given");
  for (double lr : o.lrs) ENG_CHECK(std::isfinite(lr) && lr > 0, "--lrs: learning rate {} must be positive", lr);
  ENG_CHECK(o.seeds > 0, "--seeds {} must be positive", o.seeds);
  ENG_CHECK(o.run.steps > 0, "--steps {} must be positive", o.run.steps);
  ENG_CHECK(o.run.batch > 0, "--batch {} must be positive", o.run.batch);
  check_capacity_factor(o.run.capacity_factor);
}

ProtocolResult run_protocol(const model::VisionTransformer& encoder, const Downstream& task, const ProtocolOptions& o) {
  check_protocol_options(o);
  const int64_t classes = int64_t(task.classes.size());
  ProtocolResult res;
  RunOptions ro = o.run;
  ro.plan_done = 0;
  ro.plan_total = o.run.steps * int64_t(o.lrs.size() + size_t(o.seeds));
  ro.plan_start = std::chrono::steady_clock::now();
  for (double lr : o.lrs) {
    ro.lr = lr;
    ro.seed = 0;
    ro.tag = fmt::format("lr {} seed 0 (val)", lr_str(lr));
    GridPoint g{lr, finetune_once(encoder, task.train_part, task.val, classes, ro)};
    std::printf("[finetune] lr %s: val top-1 %.4f, val loss %.4f%s (%.0f s)\n", lr_str(lr).c_str(), g.val.top1,
                g.val.eval_loss, g.val.diverged ? " (diverged)" : "", g.val.seconds);
    std::fflush(stdout);
    res.grid.push_back(g);
    ro.plan_done += o.run.steps;
  }
  const GridPoint* best = &res.grid[best_grid_point(res.grid)];
  res.chosen_lr = best->lr;
  std::printf("[finetune] chosen lr %s (val top-1 %.4f)\n", lr_str(res.chosen_lr).c_str(), best->val.top1);
  ro.lr = res.chosen_lr;
  double sum = 0;
  for (int64_t s = 0; s < o.seeds; s++) {
    ro.seed = uint64_t(s);
    ro.tag = fmt::format("lr {} seed {} (test)", lr_str(res.chosen_lr), s);
    res.tests.push_back(finetune_once(encoder, task.train, task.test, classes, ro));
    std::printf("[finetune] seed %lld: test top-1 %.4f%s (%.0f s)\n", (long long)s, res.tests.back().top1,
                res.tests.back().diverged ? " (diverged)" : "", res.tests.back().seconds);
    std::fflush(stdout);
    sum += res.tests.back().top1;
    ro.plan_done += o.run.steps;
  }
  res.mean_top1 = sum / double(o.seeds);
  double ss = 0;
  for (const auto& t : res.tests) ss += (t.top1 - res.mean_top1) * (t.top1 - res.mean_top1);
  res.std_top1 = o.seeds > 1 ? std::sqrt(ss / double(o.seeds - 1)) : 0.0;
  res.seconds = seconds_since(ro.plan_start);
  return res;
}

json run_json(const RunResult& r) {
  return {{"top1", r.top1},
          {"eval_loss", std::isfinite(r.eval_loss) ? json(r.eval_loss) : json(nullptr)},
          {"diverged", r.diverged},
          {"steps_done", r.losses.size()},
          {"final_train_loss", r.losses.empty() ? json(nullptr) : json(r.losses.back())},
          {"seconds", r.seconds},
          {"cpu_seconds", r.cpu_seconds}};
}

json run_finetune_command(const FinetuneCommand& c) {
  check_protocol_options(c.protocol);
  ENG_CHECK(!c.out.empty(), "--out: no output folder given");
  EncoderFile enc = load_encoder(c.model_file, c.heads);
  Downstream task = open_downstream(c.data);
  const model::VitConfig& cfg = enc.vit.config();
  std::printf("[finetune] model %s (%s): ViT %lld px, patch %lld, dim %lld, depth %lld, heads %lld\n",
              c.model_file.c_str(), enc.kind.c_str(), (long long)cfg.img_size, (long long)cfg.patch_size,
              (long long)cfg.embed_dim, (long long)cfg.depth, (long long)cfg.num_heads);
  if (std::string moe = moe_summary(enc.vit, c.protocol.run.capacity_factor); !moe.empty())
    std::printf("[finetune] %s; auxiliary losses importance %g + load %g, gate noise in training\n", moe.c_str(),
                c.protocol.run.importance_weight, c.protocol.run.load_weight);
  std::printf("[finetune] data: %s\n", task.description.c_str());
  if (std::string note = resize_note(task, cfg.img_size); !note.empty()) std::printf("[finetune] %s\n", note.c_str());
  std::printf("[finetune] protocol: %zu learning rates x seed 0 on train minus val, then %lld seeds at the best; %lld "
              "steps of batch %lld each, SGD momentum 0.9, cosine decay%s\n",
              c.protocol.lrs.size(), (long long)c.protocol.seeds, (long long)c.protocol.run.steps,
              (long long)c.protocol.run.batch, c.protocol.run.augment ? ", random crop (padding size/8) + flip" : "");
  std::fflush(stdout);
  make_run_dir(c.out);
  const RunLock lock(c.out);
  ProtocolResult r = run_protocol(enc.vit, task, c.protocol);

  json grid = json::array(), tests = json::array();
  std::vector<Series> curves;
  for (size_t i = 0; i < r.grid.size(); i++) {
    json g = run_json(r.grid[i].val);
    g["lr"] = r.grid[i].lr;
    g["val_top1"] = r.grid[i].val.top1;
    grid.push_back(g);
    Series s;
    for (size_t k = 0; k < r.grid[i].val.losses.size(); k++) s.x.push_back(double(k + 1)), s.y.push_back(r.grid[i].val.losses[k]);
    series_colour(i, s);
    s.label = "LR " + lr_str(r.grid[i].lr) + " (VAL)";  // upper case: the font's small 'e' is the exponent sign
    if (!s.x.empty()) curves.push_back(s);
  }
  for (size_t i = 0; i < r.tests.size(); i++) {
    json t = run_json(r.tests[i]);
    t["seed"] = i;
    t["test_top1"] = r.tests[i].top1;
    tests.push_back(t);
  }
  if (!r.tests.empty() && !r.tests[0].losses.empty()) {
    Series s;
    for (size_t k = 0; k < r.tests[0].losses.size(); k++) s.x.push_back(double(k + 1)), s.y.push_back(r.tests[0].losses[k]);
    s.r = s.g = s.b = 0;
    s.label = "CHOSEN LR " + lr_str(r.chosen_lr) + ", SEED 0 (TEST)";
    curves.push_back(s);
  }
  json out = {{"format", "moce-finetune"},
              {"model", c.model_file},
              {"model_kind", enc.kind},
              {"vit", model::config_to_json(cfg)},
              {"experts", moe_json(enc.vit, c.protocol.run.capacity_factor)},
              {"data", task.description},
              {"classes", task.classes},
              {"train_images", task.train->size()},
              {"val_images", task.val->size()},
              {"test_images", task.test->size()},
              {"protocol",
               {{"optimizer", "sgd"}, {"momentum", c.protocol.run.momentum}, {"weight_decay", c.protocol.run.weight_decay},
                {"schedule", "cosine to 0, no warm-up"}, {"batch", c.protocol.run.batch}, {"steps", c.protocol.run.steps},
                {"seeds", c.protocol.seeds}, {"lrs", c.protocol.lrs},
                {"lr_choice", "seed 0 on train minus val, best val top-1 (ties: lower val loss)"},
                {"pool", "avg + fc_norm"},
                {"augmentation", c.protocol.run.augment ? "random crop of the image padded by size/8, horizontal flip" : "none"},
                {"split_seed", c.data.split_seed}, {"val_fraction", c.data.val_fraction},
                {"test", c.data.test_data.empty() ? json(fmt::format("carved, fraction {}", c.data.test_fraction))
                                                 : json(c.data.test_data)}}},
              {"grid", grid},
              {"chosen_lr", r.chosen_lr},
              {"tests", tests},
              {"test_top1_mean", r.mean_top1},
              {"test_top1_std", r.std_top1},
              {"steps", c.protocol.run.steps},
              {"seconds", r.seconds}};
  if (!out["experts"].is_null()) {
    out["experts"]["importance_weight"] = c.protocol.run.importance_weight;
    out["experts"]["load_weight"] = c.protocol.run.load_weight;
  }
  write_json_file(c.out + "/finetune.json", out);
  if (!curves.empty())
    write_line_plot(c.out + "/loss_curves.png", curves, PlotText{"FINE-TUNING LOSS PER STEP", "STEP", "TRAINING LOSS (CROSS-ENTROPY)"}, 800, 500);
  std::printf("[finetune] test top-1 %.4f +- %.4f over %lld seeds at lr %s (%.0f s)\n", r.mean_top1, r.std_top1,
              (long long)c.protocol.seeds, lr_str(r.chosen_lr).c_str(), r.seconds);
  std::printf("[finetune] wrote %s/finetune.json and %s/loss_curves.png\n", c.out.c_str(), c.out.c_str());
  return out;
}

}  // namespace moce::finetune
