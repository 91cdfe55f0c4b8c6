// test_gpu_pretrain.cpp: `moce pretrain --device cuda` through the library function the binary calls
// (moce::pretrain): a tiny MAE trains on a generated image folder on cuda and on cpu; the cuda losses follow the cpu
// ones step by step, repeat bit for bit (also when the losses are read back once per epoch), and a stopped and
// resumed cuda run equals the uninterrupted one bit for bit; a diverging cuda run stops before saving; --precision
// tf32 stays near f32.
// Also BatchFeed alone (batches arrive intact through the reused pinned buffers) and `moce eval-mae --device cuda`.
// Without a GPU every case prints why and passes.
#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "moce/cmd/commands.h"
#include "moce/common/batch_feed.h"
#include "moce/common/dataset.h"
#include "moce/train/pretrain.h"
#include "tests/gpu/gpu_test_util.h"

using namespace gputest;

namespace {

std::string temp_dir(const std::string& tag) {
  std::string d = "build/test-tmp/gpu-pretrain-" + tag;
  REQUIRE(std::system(("rm -rf " + d + " && mkdir -p " + d + "/data").c_str()) == 0);
  return d;
}

// root/data/<class>/<i>.png: 16x16 colour fields with a ramp per class, so the MAE has something to learn.
std::string make_folder(const std::string& root, int per_class) {
  eng::Generator g(99);
  for (int c = 0; c < 2; c++) {
    std::string dir = root + "/data/class" + std::to_string(c);
    ::mkdir(dir.c_str(), 0755);
    for (int i = 0; i < per_class; i++) {
      Tensor base = g.uniform({3, 1, 1}, 0.2, 0.8);
      Tensor ramp = eng::mul(Tensor::arange(16, DType::F32).reshape({1, 1, 16}), c ? 0.02 : -0.02);
      Tensor img = eng::clamp(eng::add(eng::add(base.expand({3, 16, 16}), ramp), g.uniform({3, 16, 16}, 0.0, 0.1)), 0.0, 1.0);
      data::write_png(dir + "/" + std::to_string(i) + ".png", img);
    }
  }
  return root + "/data";
}

moce::PretrainOptions tiny_run(const std::string& data, const std::string& out, const std::string& device) {
  moce::PretrainOptions o;
  o.data = data;
  o.out = out;
  o.device = device;
  o.config = "mae_test_tiny";
  o.epochs = 2;
  o.batch = 8;
  o.workers = 2;
  o.base_lr = 0.1;  // lr 3.1e-3 from the first step (no warm-up): the loss falls within the 6 steps
  o.warmup_epochs = 0;
  o.log_every = 1;
  return o;
}

bool same_weights(const std::string& a, const std::string& b) {
  auto x = eng::load_safetensors(a).tensors, y = eng::load_safetensors(b).tensors;
  if (x.size() != y.size()) return false;
  for (const auto& [name, t] : x) {
    auto it = y.find(name);
    if (it == y.end() || !same_bits(t, it->second)) return false;
  }
  return true;
}

}  // namespace

TEST_SUITE("gpu pretrain") {
  TEST_CASE("pretrain on cuda follows the cpu run step by step, repeats bit for bit and resumes exactly") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    const std::string root = temp_dir("run");
    const std::string data = make_folder(root, 12);  // 24 images: 3 steps of 8 per epoch, 2 epochs
    moce::PretrainResult c = moce::pretrain(tiny_run(data, root + "/cpu", "cpu"));
    moce::PretrainResult g = moce::pretrain(tiny_run(data, root + "/cuda", "cuda"));
    // The second cuda run reads its losses back once per epoch instead of every step: the same bits.
    moce::PretrainOptions once_per_epoch = tiny_run(data, root + "/cuda2", "cuda:0");
    once_per_epoch.log_every = 100;
    moce::PretrainResult g2 = moce::pretrain(once_per_epoch);
    REQUIRE(c.status == 0);
    REQUIRE(g.status == 0);
    REQUIRE(g2.status == 0);
    REQUIRE(c.step_losses.size() == 6);
    REQUIRE(g.step_losses.size() == 6);

    // Same init (made on the CPU, then moved), same data, order and masks (Philox uniforms are bitwise equal on both
    // devices); the devices differ only in f32 summation order (GEMM, reductions, attention), ~1e-7 relative per op.
    // Step 0 is before any update: those differences alone, and 1e-5 relative is ~100x their size. Later steps carry
    // them through AdamW, whose first updates are about lr * sign(g) per weight: a gradient component that is ~0 may
    // take the other sign on the other device and move its weight by 2 lr, but such weights barely change the loss
    // (their gradient is ~0). Over 6 steps that leaves the losses well within 1e-3 relative (as the same bound in
    // test_gpu_model.cpp over 25 steps); a wrong batch, mask or optimizer state would be off by 1e-2 or more.
    CHECK(std::fabs(g.step_losses[0] - c.step_losses[0]) <= 1e-5 * std::fabs(c.step_losses[0]));
    double worst = 0;
    for (size_t s = 0; s < c.step_losses.size(); s++)
      worst = std::max(worst, std::fabs(g.step_losses[s] - c.step_losses[s]) / std::max(1.0, std::fabs(c.step_losses[s])));
    MESSAGE("losses cpu " << c.step_losses.front() << " -> " << c.step_losses.back() << ", cuda " << g.step_losses.front()
                          << " -> " << g.step_losses.back() << "; largest step difference " << worst);
    CHECK(worst <= 1e-3);
    // It learns: the second epoch's mean loss is below the first's.
    CHECK(g.step_losses[3] + g.step_losses[4] + g.step_losses[5] < g.step_losses[0] + g.step_losses[1] + g.step_losses[2]);

    // Bit for bit on cuda: no atomics in the kernels, fixed reduction orders, the same copies in the same order.
    CHECK(g.step_losses == g2.step_losses);
    CHECK(same_weights(root + "/cuda/weights.safetensors", root + "/cuda2/weights.safetensors"));

    // Exact resume on cuda: stop after epoch 1 (checkpoint written from host copies), resume onto the GPU.
    moce::PretrainSession stop;
    stop.stop_after = 1;
    moce::PretrainResult part = moce::pretrain(tiny_run(data, root + "/part", "cuda"), stop);
    REQUIRE(part.status == 0);
    CHECK(part.epochs_done == 1);
    eng::Checkpoint ck = eng::load_checkpoint(root + "/part/checkpoint-last.safetensors");
    CHECK(ck.step == 3);
    CHECK(ck.config["run"]["device"] == "cuda");
    for (const auto& [name, t] : ck.optimizer_state) CHECK(t.device().is_cpu());
    moce::PretrainSession resume;
    resume.resume = root + "/part";
    moce::PretrainResult rest = moce::pretrain(moce::PretrainOptions(), resume);
    REQUIRE(rest.status == 0);
    std::vector<double> joined = part.step_losses;
    joined.insert(joined.end(), rest.step_losses.begin(), rest.step_losses.end());
    CHECK(joined == g.step_losses);
    CHECK(same_weights(root + "/cuda/weights.safetensors", root + "/part/weights.safetensors"));

    // A run saved on the CPU resumes on cuda (--resume DIR --device cuda): the loaded state moves to the GPU.
    moce::PretrainResult cpart = moce::pretrain(tiny_run(data, root + "/cpu-part", "cpu"), stop);
    REQUIRE(cpart.status == 0);
    moce::PretrainSession to_gpu;
    to_gpu.resume = root + "/cpu-part";
    to_gpu.device = "cuda";
    moce::PretrainResult moved = moce::pretrain(moce::PretrainOptions(), to_gpu);
    REQUIRE(moved.status == 0);
    REQUIRE(moved.step_losses.size() == 3);
    for (size_t s = 0; s < 3; s++)
      CHECK(std::fabs(moved.step_losses[s] - c.step_losses[3 + s]) <= 1e-3 * std::fabs(c.step_losses[3 + s]));
  }

  TEST_CASE("pretrain on cuda: a diverging run stops at the first non-finite loss with no sync per step") {
    GPU_TEST_OR_SKIP();
    const std::string root = temp_dir("diverge");
    const std::string data = make_folder(root, 12);
    moce::PretrainSession stop;
    stop.stop_after = 1;
    REQUIRE(moce::pretrain(tiny_run(data, root + "/run", "cuda"), stop).status == 0);
    const std::string ck = root + "/run/checkpoint-last.safetensors";
    eng::Checkpoint before = eng::load_checkpoint(ck);
    before.config["run"]["base_lr"] = 1e12;  // the loss explodes within the next epoch
    before.config["run"]["log_every"] = 100;  // read back only at the end of the epoch
    eng::save_checkpoint(ck, before);
    moce::PretrainSession resume;
    resume.resume = root + "/run";
    moce::PretrainResult r = moce::pretrain(moce::PretrainOptions(), resume);
    CHECK(r.status == 2);
    CHECK(eng::load_checkpoint(ck).rng["next_epoch"] == 1);  // nothing saved after the bad step
  }

  TEST_CASE("pretrain --precision tf32 on cuda follows the f32 run, and TF32 is off again afterwards") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    const std::string root = temp_dir("tf32");
    const std::string data = make_folder(root, 12);
    moce::PretrainResult f = moce::pretrain(tiny_run(data, root + "/f32", "cuda"));
    moce::PretrainOptions o = tiny_run(data, root + "/tf32", "cuda");
    o.precision = "tf32";
    moce::PretrainResult t = moce::pretrain(o);
    REQUIRE(f.status == 0);
    REQUIRE(t.status == 0);
    CHECK_FALSE(eng::cuda_tf32_enabled());
    // TF32 rounds GEMM inputs to a 10-bit mantissa (2^-11 relative each): the GEMMs move by ~1e-3 relative, and the
    // loss of a 6-step run by well under 2e-2; a run that ignored the flag would equal the f32 run bit for bit.
    double worst = 0;
    for (size_t s = 0; s < f.step_losses.size(); s++)
      worst = std::max(worst, std::fabs(t.step_losses[s] - f.step_losses[s]) / std::fabs(f.step_losses[s]));
    MESSAGE("tf32 vs f32: largest relative step-loss difference " << worst);
    CHECK(worst <= 2e-2);
    CHECK(worst > 0);
    nlohmann::json cfg = nlohmann::json::parse(std::ifstream(root + "/tf32/config.json"));
    CHECK(cfg["run"]["precision"] == "tf32");
  }

  TEST_CASE("BatchFeed on cuda: every batch arrives intact through two pinned buffers that are reused") {
    GPU_TEST_OR_SKIP();
    const std::string root = temp_dir("feed");
    auto ds = moce::open_dataset(make_folder(root, 10), true);  // 20 images: 5 batches of 4 per epoch
    data::LoaderOptions lo;
    lo.batch_size = 4;
    lo.num_workers = 2;
    data::Loader on_gpu(ds, data::mae_pretrain_pipeline(16), lo), on_cpu(ds, data::mae_pretrain_pipeline(16), lo);
    moce::BatchFeed feed(on_gpu, cuda());
    int64_t batches = 0;
    for (int64_t epoch = 0; epoch < 3; epoch++) {
      feed.start_epoch(epoch, epoch == 2 ? 4 : 5);  // epoch 2 uses 4 of its 5 batches
      on_cpu.start_epoch(epoch);
      data::Batch g, c;
      int64_t k = 0;
      // Epoch 1 is abandoned after its third batch, whose successor is then in flight: start_epoch drops it.
      while ((epoch != 1 || k < 3) && feed.next(g)) {
        // Prefetch every other batch only: both orders of next() and prefetch() must deliver the same bytes.
        if (k % 2 == 0) feed.prefetch();
        REQUIRE(on_cpu.next(c));
        CHECK(g.images.device() == cuda());
        CHECK(g.indices.to_vector<int64_t>() == c.indices.to_vector<int64_t>());
        CHECK(same_bits(g.images, c.images));
        // Work queued on the compute stream reads the copied bytes (the wait on the copy's event is in place).
        CHECK(eng::sum(g.images).item() == doctest::Approx(eng::sum(c.images).item()).epsilon(1e-6));
        k++;
        batches++;
      }
      CHECK(k == (epoch == 0 ? 5 : epoch == 1 ? 3 : 4));
    }
    CHECK(batches == 12);
    CHECK(feed.pinned_allocations() == 2);  // one per pinned buffer, whatever the number of batches
  }

  TEST_CASE("eval-mae --device cuda gives the cpu run's figures") {
    GPU_TEST_OR_SKIP();
    eng::set_cuda_tf32(false);
    const std::string root = temp_dir("eval");
    const std::string data = make_folder(root, 8);
    auto eval = [&](const std::string& device) {
      std::vector<std::string> args = {"moce", "eval-mae", "--random-init", "--config", "mae_test_tiny", "--train-data",
                                       data, "--test-data", data, "--probe-epochs", "3", "--batch", "8", "--grid", "2",
                                       "--knn-k", "3", "--device", device, "--out", root + "/" + device};
      std::vector<char*> argv;
      for (auto& s : args) argv.push_back(s.data());
      REQUIRE(moce::cmd_eval_mae(int(argv.size()), argv.data()) == 0);
      std::ifstream f(root + "/" + device + "/eval.json");
      return nlohmann::json::parse(f);
    };
    nlohmann::json c = eval("cpu"), g = eval("cuda");
    CHECK(g["inputs"]["device"] == "cuda:0");
    // The same weights and masks; the forward passes differ in f32 summation order only (~1e-6 relative).
    const double lc = c["reconstruction"]["loss"], lg = g["reconstruction"]["loss"];
    const double pc = c["reconstruction"]["psnr_masked_db"], pg = g["reconstruction"]["psnr_masked_db"];
    CHECK(std::fabs(lg - lc) <= 1e-5 * std::fabs(lc));
    CHECK(std::fabs(pg - pc) <= 1e-4);
    CHECK(g["knn"]["top1"] == c["knn"]["top1"]);
  }
}
