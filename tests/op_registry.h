// op_registry.h: every op is a registered case, checked in three modes by tests/op_registry.cpp:
//   1. forward in f64 against an independent naive f64 reference (`ref`),
//   2. forward in f32 against the same reference (relative error <= fwd_tol_f32),
//   3. backward in f64 against central finite differences of the op itself (relative error <= grad_tol).
// Inputs are generated from InputSpecs with a fixed seed; a spec can ask for a non-contiguous view.
// On a machine with a GPU, tests/gpu adds a fourth mode (CUDA against CPU).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/ops.h"

namespace optest {

using eng::Shape;
using eng::Tensor;

enum class Kind {
  Normal,    // N(0, 1)
  Positive,  // uniform in [0.5, 2]
  Uniform,   // uniform in [-1, 1]
  Index,     // i64 in [0, hi), never differentiated
  Distinct,  // normal values guaranteed pairwise far apart (for max/sort/topk, so FD does not cross ties)
};

struct InputSpec {
  Shape shape;
  Kind kind = Kind::Normal;
  int64_t hi = 0;             // Index: exclusive upper bound
  bool grad = true;           // differentiate with respect to this input
  bool transposed = false;    // hand the op a transposed (non-contiguous) view of the last two dims
};

// A host copy of an input or output in f64, row-major, for naive references.
struct HostArray {
  Shape shape;
  std::vector<double> v;
  int64_t numel() const { return int64_t(v.size()); }
  int64_t size(int64_t d) const { return shape[size_t(d < 0 ? d + int64_t(shape.size()) : d)]; }
  // Row-major linear index of a multi-index.
  int64_t index(std::initializer_list<int64_t> idx) const {
    int64_t off = 0;
    size_t d = 0;
    for (int64_t i : idx) off = off * shape[d++] + i;
    return off;
  }
  double& at(std::initializer_list<int64_t> idx) { return v[size_t(index(idx))]; }
  double at(std::initializer_list<int64_t> idx) const { return v[size_t(index(idx))]; }
};

struct OpCase {
  std::string name;
  std::vector<InputSpec> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> fn;       // our op
  std::function<HostArray(const std::vector<HostArray>&)> ref;  // naive f64 reference (may be empty: no fwd check)
  double fwd_tol_f32 = 1e-5;
  double fwd_tol_f64 = 1e-10;
  double grad_tol = 1e-6;
  double fd_eps = 1e-6;
};

// Registers a case at static-initialisation time.
int register_case(OpCase c);
const std::vector<OpCase>& all_cases();

#define OPTEST_CONCAT2(a, b) a##b
#define OPTEST_CONCAT(a, b) OPTEST_CONCAT2(a, b)
// OP_CASE({...}); at namespace scope in any tests/*.cpp file.
#define OP_CASE(...) static int OPTEST_CONCAT(optest_case_, __COUNTER__) = ::optest::register_case(__VA_ARGS__)

// Helpers for references.
HostArray make_host(const Shape& shape, double fill = 0.0);
// Reference for a broadcasting binary op.
HostArray broadcast_binary(const HostArray& a, const HostArray& b, const std::function<double(double, double)>& f);
HostArray map_unary(const HostArray& a, const std::function<double(double)>& f);
// Naive f64 attention softmax(scale * q k^T) v of row-major q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv];
// scale <= 0 means 1 / sqrt(D).
HostArray attention_ref(const HostArray& q, const HostArray& k, const HostArray& v, double scale);
// The q, k, v [B, H, T, D] of a packed projection qkv [B, T, 3 * H * D] (q, k, v x heads x D per token).
std::vector<HostArray> split_qkv_host(const HostArray& qkv, int64_t H);

// The inputs of a case, generated from its specs from a seed made of its name: the same on every run and device
// (the GPU suite feeds the CPU and CUDA the very inputs the CPU modes use).
std::vector<HostArray> case_inputs(const OpCase& c);
// n deterministic normal numbers for auxiliary data of a case (e.g. the GPU suite's loss weights), from a stream
// of its own (the case's seed xor salt), so the inputs stay those of case_inputs.
std::vector<double> case_normals(const OpCase& c, uint64_t salt, size_t n);

// Runs one case in every mode; returns failure messages (empty on success). Used by the doctest driver
// and by the GPU suite.
std::vector<std::string> run_case(const OpCase& c);

}  // namespace optest
