// test_training.cpp: small models train on real images (Fashion-MNIST from Debian's dataset-fashion-mnist):
// a two-layer MLP and a tiny pre-norm transformer block. Also: the same run repeats bit for bit, with
// 1 or 2 OpenMP threads. Skips with a message when Fashion-MNIST is not installed.
#include <doctest/doctest.h>
#include <omp.h>

#include <cstring>

#include "data/idx.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/rng.h"

using namespace eng;

namespace {

struct Data {
  data::LabelledImages train, test;
};

const Data* fashion() {
  static Data d;
  static bool tried = false, ok = false;
  if (!tried) {
    tried = true;
    std::string dir = data::fashion_mnist_dir();
    if (!dir.empty()) {
      d.train = data::load_mnist_split(dir, "train", 8192);
      d.test = data::load_mnist_split(dir, "t10k", 2000);
      ok = true;
    }
  }
  return ok ? &d : nullptr;
}

Tensor param(Generator& g, const Shape& s, double std) { return g.normal(s, 0.0, std).requires_grad_(); }

struct Mlp {
  Tensor w1, b1, w2, b2;
  explicit Mlp(Generator& g)
      : w1(param(g, {128, 784}, 0.05)), b1(Tensor::zeros({128}).requires_grad_()),
        w2(param(g, {10, 128}, 0.09)), b2(Tensor::zeros({10}).requires_grad_()) {}
  Tensor forward(const Tensor& x) const { return linear(relu(linear(x.reshape({x.size(0), -1}), w1, b1)), w2, b2); }
  std::vector<Tensor> params() const { return {w1, b1, w2, b2}; }
};

// Pre-norm transformer block over 49 patch tokens (4x4 patches of a 28x28 image), mean-pooled, linear head.
struct TinyTransformer {
  static constexpr int64_t D = 32, H = 2, P = 4, T = 49;
  Tensor embed_w, embed_b, pos, ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b,
      norm_w, norm_b, head_w, head_b;
  explicit TinyTransformer(Generator& g) {
    auto zeros = [](Shape s) { return Tensor::zeros(s).requires_grad_(); };
    auto ones = [](Shape s) { return Tensor::ones(s).requires_grad_(); };
    embed_w = param(g, {D, P * P}, 0.25);
    embed_b = zeros({D});
    pos = param(g, {T, D}, 0.02);
    ln1_w = ones({D});
    ln1_b = zeros({D});
    qkv_w = param(g, {3 * D, D}, 0.18);
    qkv_b = zeros({3 * D});
    proj_w = param(g, {D, D}, 0.18);
    proj_b = zeros({D});
    ln2_w = ones({D});
    ln2_b = zeros({D});
    fc1_w = param(g, {4 * D, D}, 0.18);
    fc1_b = zeros({4 * D});
    fc2_w = param(g, {D, 4 * D}, 0.09);
    fc2_b = zeros({D});
    norm_w = ones({D});
    norm_b = zeros({D});
    head_w = param(g, {10, D}, 0.18);
    head_b = zeros({10});
  }
  Tensor forward(const Tensor& img) const {
    int64_t B = img.size(0);
    // [B,1,28,28] -> [B, 7, 4, 7, 4] -> [B, 7, 7, 4, 4] -> [B, 49, 16]
    Tensor patches = img.reshape({B, 7, P, 7, P}).permute({0, 1, 3, 2, 4}).reshape({B, T, P * P});
    Tensor x = add(linear(patches, embed_w, embed_b), pos);
    Tensor h = layer_norm(x, ln1_w, ln1_b, 1e-6);
    Tensor qkv = linear(h, qkv_w, qkv_b).reshape({B, T, 3, H, D / H}).permute({2, 0, 3, 1, 4});
    Tensor a = attention(qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2));
    x = add(x, linear(a.transpose(1, 2).reshape({B, T, D}), proj_w, proj_b));
    h = layer_norm(x, ln2_w, ln2_b, 1e-6);
    x = add(x, linear(gelu(linear(h, fc1_w, fc1_b)), fc2_w, fc2_b));
    return linear(layer_norm(mean(x, {1}), norm_w, norm_b, 1e-6), head_w, head_b);
  }
  std::vector<Tensor> params() const {
    return {embed_w, embed_b, pos,   ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w,
            ln2_b,   fc1_w,   fc1_b, fc2_w, fc2_b, norm_w, norm_b, head_w, head_b};
  }
};

template <typename Model>
std::vector<double> train(const Model& m, const Data& d, int64_t steps, int64_t batch, double lr, uint64_t seed) {
  AdamW opt(m.params(), AdamWOptions{lr, 0.9, 0.999, 1e-8, 1e-4});
  Generator shuffle(seed, 1);
  int64_t n = d.train.images.size(0);
  Tensor perm = shuffle.permutation(n);
  std::vector<double> losses;
  for (int64_t s = 0; s < steps; s++) {
    int64_t start = (s * batch) % (n - batch + 1);
    Tensor idx = perm.slice(0, start, start + batch);
    Tensor x = index_select(d.train.images, 0, idx);
    Tensor y = index_select(d.train.labels.unsqueeze(1), 0, idx).squeeze(1);
    Tensor loss = cross_entropy(m.forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    losses.push_back(loss.item());
  }
  return losses;
}

template <typename Model> double accuracy(const Model& m, const Data& d) {
  NoGradGuard ng;
  Tensor pred = argmax(m.forward(d.test.images), 1);
  auto p = pred.to_vector<int64_t>(), y = d.test.labels.to_vector<int64_t>();
  int64_t hit = 0;
  for (size_t i = 0; i < p.size(); i++) hit += p[i] == y[i];
  return double(hit) / double(p.size());
}

double mean_of(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; i++) s += v[i];
  return s / double(to - from);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), a.nbytes()) == 0;
}

}  // namespace

TEST_SUITE("training") {
  TEST_CASE("a two-layer MLP learns Fashion-MNIST") {
    const Data* d = fashion();
    if (!d) {
      MESSAGE("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
      return;
    }
    Generator g(7);
    Mlp m(g);
    double acc0 = accuracy(m, *d);
    auto losses = train(m, *d, 200, 128, 2e-3, 11);
    double first = mean_of(losses, 0, 10), last = mean_of(losses, 190, 200), acc = accuracy(m, *d);
    MESSAGE("MLP: loss " << first << " -> " << last << ", test accuracy " << acc0 << " -> " << acc);
    CHECK(losses[0] > 2.0);  // ~ln(10) at the start
    CHECK(last < 0.6);
    CHECK(acc > 0.78);
  }

  TEST_CASE("a tiny transformer block learns Fashion-MNIST") {
    const Data* d = fashion();
    if (!d) {
      MESSAGE("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
      return;
    }
    Generator g(5);
    TinyTransformer m(g);
    auto losses = train(m, *d, 150, 64, 3e-3, 13);
    double first = mean_of(losses, 0, 10), last = mean_of(losses, 140, 150), acc = accuracy(m, *d);
    MESSAGE("transformer: loss " << first << " -> " << last << ", test accuracy " << acc);
    CHECK(losses[0] > 2.0);
    CHECK(last < 0.95);
    CHECK(acc > 0.6);
  }

  TEST_CASE("the same run is bitwise identical, run after run and with 1 or 2 threads") {
    const Data* d = fashion();
    if (!d) {
      MESSAGE("skipped: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)");
      return;
    }
    int saved = omp_get_max_threads();
    auto run = [&](int threads) {
      omp_set_num_threads(threads);
      Generator g(3);
      TinyTransformer m(g);
      auto losses = train(m, *d, 6, 32, 1e-3, 17);
      return std::make_pair(losses, m.params());
    };
    auto a = run(2), b = run(2), c = run(1);
    omp_set_num_threads(saved);
    CHECK(a.first == b.first);
    CHECK(a.first == c.first);
    for (size_t i = 0; i < a.second.size(); i++) {
      CHECK(same_bits(a.second[i], b.second[i]));
      CHECK(same_bits(a.second[i], c.second[i]));
    }
  }
}
