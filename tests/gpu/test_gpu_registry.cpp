// test_gpu_registry.cpp: the op registry's fourth mode (tests/op_registry.h): every registered case runs on the
// CPU and on CUDA from the same inputs, in f32 and in f64, and the CUDA forward output and every input gradient
// (of L = sum(y * w) for a fixed random w) are compared with the CPU's.
//   f32: relative error <= 1e-5 (max |gpu - cpu| / max |cpu|); both sides compute in f32 with f64 sums where the
//        CPU uses them, so only summation order and the last ulp of libm functions differ (~1e-7).
//   f64: relative error <= 1e-10.
//   integer outputs (indices, argsort): exactly equal.
// TF32 stays off here (the default), so matmul cases are plain f32 on both sides; TF32 and bf16 have their own
// tests with per-op tolerances in test_gpu_kernels.cpp. Each CUDA run is also repeated and must give the same
// bits (determinism). A case whose fn builds CPU tensors itself (e.g. Tensor::scalar(...) without a device)
// cannot run on CUDA; it is listed in a message, not failed, since the op it tests is covered elsewhere.
#include <algorithm>

#include "tests/gpu/gpu_test_util.h"
#include "tests/op_registry.h"

using namespace optest;
using namespace gputest;

namespace {

// The tensor an op sees on `dev`: dtype, a transposed (non-contiguous) view when asked, a leaf when it is
// differentiated.
Tensor make_input(const HostArray& h, const InputSpec& s, DType float_dt, Device dev, bool grad) {
  const DType dt = s.kind == Kind::Index ? DType::I64 : float_dt;
  Tensor t;
  if (!s.transposed || h.shape.size() < 2) {
    t = Tensor::from_vector(h.v, h.shape, DType::F64).to(dt).to(dev);
  } else {
    Tensor base = Tensor::from_vector(h.v, h.shape, DType::F64).transpose(-2, -1).contiguous().to(dt).to(dev);
    t = base.transpose(-2, -1);
  }
  t = t.detach();
  if (grad && s.grad && s.kind != Kind::Index) t.requires_grad_(true);
  return t;
}

struct Result {
  Tensor y;                   // forward output (on its device)
  std::vector<Tensor> grads;  // per input; undefined where none
};

// w == nullptr: forward only.
Result run_on(const OpCase& c, const std::vector<HostArray>& hs, const std::vector<double>* w, DType dt, Device dev) {
  std::vector<Tensor> xs;
  for (size_t i = 0; i < hs.size(); i++) xs.push_back(make_input(hs[i], c.inputs[i], dt, dev, true));
  Result r;
  r.y = c.fn(xs);
  r.grads.resize(xs.size());
  if (!w || !eng::is_floating(r.y.dtype()) || !r.y.requires_grad()) return r;
  Tensor wt = Tensor::from_vector(*w, r.y.shape(), DType::F64).to(r.y.dtype()).to(dev);
  eng::sum(eng::mul(r.y, wt)).backward();
  for (size_t i = 0; i < xs.size(); i++)
    if (xs[i].requires_grad() && xs[i].grad().defined()) r.grads[i] = xs[i].grad();
  return r;
}

// Failure messages of one case in one dtype (empty = pass).
std::vector<std::string> compare_case(const OpCase& c, DType dt) {
  std::vector<std::string> fails;
  std::vector<HostArray> hs = case_inputs(c);  // the registry's own inputs for this case
  // w from the CPU output's shape (a separate stream, so the inputs stay the registry's).
  std::vector<double> w;
  Result cpu_r;
  {
    Result probe = run_on(c, hs, nullptr, dt, cpu());
    w = case_normals(c, 0x9e3779b97f4a7c15ull, size_t(probe.y.numel()));
    cpu_r = run_on(c, hs, &w, dt, cpu());
  }
  Result gpu_r = run_on(c, hs, &w, dt, cuda());
  Result gpu_again = run_on(c, hs, &w, dt, cuda());
  const double tol = dt == DType::F32 ? 1e-5 : 1e-10;
  const char* dn = eng::dtype_name(dt);
  if (gpu_r.y.device() != cuda()) fails.push_back(fmt::format("{}: output is on {}, not cuda", dn, gpu_r.y.device().str()));
  if (gpu_r.y.shape() != cpu_r.y.shape() || gpu_r.y.dtype() != cpu_r.y.dtype()) {
    fails.push_back(fmt::format("{}: cuda output {} vs cpu {}", dn, gpu_r.y.str(), cpu_r.y.str()));
    return fails;
  }
  if (eng::is_floating(cpu_r.y.dtype())) {
    const double e = rel_err(gpu_r.y, cpu_r.y);
    if (!(e <= tol)) fails.push_back(fmt::format("{} forward: cuda vs cpu rel err {:.3e} > {:.0e}", dn, e, tol));
  } else if (gpu_r.y.to_vector<int64_t>() != cpu_r.y.to_vector<int64_t>()) {
    fails.push_back(fmt::format("{} forward: integer outputs differ between cuda and cpu", dn));
  }
  if (!same_bits(gpu_r.y, gpu_again.y)) fails.push_back(fmt::format("{} forward: two cuda runs differ", dn));
  for (size_t i = 0; i < hs.size(); i++) {
    const bool has_cpu = cpu_r.grads[i].defined(), has_gpu = gpu_r.grads[i].defined();
    if (has_cpu != has_gpu) {
      fails.push_back(fmt::format("{} input {}: gradient on {} only", dn, i, has_cpu ? "cpu" : "cuda"));
      continue;
    }
    if (!has_cpu) continue;
    const double e = rel_err(gpu_r.grads[i], cpu_r.grads[i]);
    if (!(e <= tol)) fails.push_back(fmt::format("{} input {}: gradient cuda vs cpu rel err {:.3e} > {:.0e}", dn, i, e, tol));
    if (!gpu_again.grads[i].defined() || !same_bits(gpu_r.grads[i], gpu_again.grads[i]))
      fails.push_back(fmt::format("{} input {}: two cuda runs give different gradients", dn, i));
  }
  return fails;
}

}  // namespace

TEST_SUITE("gpu registry") {
  TEST_CASE("every registered op on cuda vs cpu: forward and every gradient, f32 (1e-5) and f64 (1e-10)") {
    GPU_TEST_OR_SKIP();
    REQUIRE(all_cases().size() > 0);
    eng::set_cuda_tf32(false);
    int checked = 0;
    std::vector<std::string> host_only;
    for (const OpCase& c : all_cases()) {
      for (DType dt : {DType::F32, DType::F64}) {
        std::vector<std::string> fails;
        try {
          fails = compare_case(c, dt);
        } catch (const std::exception& e) {
          const std::string what = e.what();
          if (what.find("different devices") != std::string::npos) {
            if (dt == DType::F32) host_only.push_back(c.name);
            continue;
          }
          fails.push_back(std::string("threw: ") + what);
        }
        for (const auto& f : fails) FAIL_CHECK(std::string(c.name + ": " + f));
        checked++;
      }
    }
    MESSAGE(checked << " (case, dtype) pairs checked on cuda against the cpu");
    if (!host_only.empty()) {
      std::string names;
      for (const auto& n : host_only) names += (names.empty() ? "" : ", ") + n;
      MESSAGE("not run on cuda (their fn creates CPU tensors; give them x[0].device()): " << names);
    }
  }
}
