// test_gpu_cluster.cpp: MoCE's clustering steps on CUDA against the CPU: the batch Sinkhorn, the centroid loss and
// its gradient (engine ops, so the same code runs on both), and a short alternating optimisation (the engine-op path,
// which is what CUDA runs) with the assignments it gives. Tolerances: f32 GEMMs with another summation order on the
// GPU (cuBLAS, no TF32), then exp/log on scores divided by eps = 0.05: 1e-4 relative on Q, 1e-5 on the loss.
#include "tests/gpu/gpu_test_util.h"

#include "moce/cluster/assign.h"
#include "moce/cluster/centroids.h"
#include "moce/cluster/sinkhorn.h"

using namespace gputest;
using namespace moce::cluster;

TEST_SUITE("gpu cluster") {
  TEST_CASE("Sinkhorn and the centroid loss and gradient on CUDA match the CPU") {
    GPU_TEST_OR_SKIP();
    const int64_t B = 257, M = 33, d = 24;
    Tensor f = eng::l2_normalize(normal({B, d}, 1), 1), c = eng::l2_normalize(normal({M, d}, 2), 1);
    Tensor scores = eng::matmul(f, c.t());
    Tensor q_cpu = sinkhorn_batch(scores, 0.05, 3);
    Tensor q_gpu = sinkhorn_batch(on(scores, cuda()), 0.05, 3);
    CHECK(q_gpu.device().is_cuda());
    CHECK(rel_err(q_gpu.to(cpu()), q_cpu) < 1e-4);
    Tensor tiny_cpu = sinkhorn_batch(scores, 1e-3, 3), tiny_gpu = sinkhorn_batch(on(scores, cuda()), 1e-3, 3);
    std::vector<float> tg = tiny_gpu.to(cpu()).to_vector<float>();
    for (float v : tg) REQUIRE(std::isfinite(v));  // the log domain: no overflow on the GPU either
    CHECK(rel_err(tiny_gpu.to(cpu()), tiny_cpu) < 1e-3);
    Tensor cc = on(c, cpu()), cg = on(c, cuda());
    cc.requires_grad_(true);
    cg.requires_grad_(true);
    Tensor lc = centroid_loss(f, cc, q_cpu, 0.1), lg = centroid_loss(on(f, cuda()), cg, on(q_cpu, cuda()), 0.1);
    lc.backward();
    lg.backward();
    CHECK(lg.to(cpu()).item() == doctest::Approx(lc.item()).epsilon(1e-5));
    CHECK(rel_err(cg.grad().to(cpu()), cc.grad()) < 1e-4);
  }

  TEST_CASE("a short alternating optimisation on CUDA gives the CPU's centroids and assignments") {
    GPU_TEST_OR_SKIP();
    const int64_t n = 800, M = 8, d = 16;  // small: the emulated GPU suite runs every kernel on fibers
    eng::Generator gen(3, 7);
    Tensor centres = eng::l2_normalize(gen.normal({M, d}), 1);
    std::vector<int64_t> g(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; i++) g[size_t(i)] = i % M;
    Tensor x = eng::index_select(centres, 0, Tensor::from_vector(g, {n})) + gen.normal({n, d}, 0.0, 0.15);
    FeatureBank bank = bank_from_tensor(eng::l2_normalize(x, 1));
    ClusterConfig cfg;
    cfg.clusters = M;
    cfg.batch = 200;
    cfg.epochs = 2;
    cfg.lr = 0.01;
    cfg.init = "kmeans++";
    cfg.cpu_fast_path = false;  // the engine-op path on both devices
    CentroidResult on_cpu = train_centroids(bank, cfg, cpu());
    CentroidResult on_gpu = train_centroids(bank, cfg, cuda());
    CHECK(rel_err(on_gpu.centroids, on_cpu.centroids) < 1e-3);
    CHECK(on_gpu.epochs.back().mean_loss == doctest::Approx(on_cpu.epochs.back().mean_loss).epsilon(1e-4));
    Assignment a_cpu = assign_balanced(bank, on_cpu.centroids), a_gpu = assign_balanced(bank, on_gpu.centroids);
    int64_t same = 0;
    for (int64_t i = 0; i < n; i++) same += a_cpu.balanced[size_t(i)] == a_gpu.balanced[size_t(i)];
    CHECK(same >= n - n / 100);  // a few points on a boundary may change sides
  }
}
