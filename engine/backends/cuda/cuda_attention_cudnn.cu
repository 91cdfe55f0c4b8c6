// cuda_attention_cudnn.cu: cuDNN's fused scaled-dot-product attention as the fast path of bf16 attention
// (attention_impl.h says when it runs), built through cuDNN's backend API with no frontend library:
//
//   forward:  one CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR (cuDNN >= 9.13.1): Q, K, V -> O and Stats, where
//             Stats is the natural-log sum of exp(scale q.k) per query row: exactly our lse, so either
//             implementation's backward can follow either forward;
//   backward: one CUDNN_BACKEND_OPERATION_SDPA_BWD_DESCRIPTOR (cuDNN >= 9.17): Q, K, V, O, dO, Stats -> dQ, dK, dV.
// Tensors are described with our strides ([batch, heads, tokens, dim], dim contiguous), so the views of a packed
// qkv projection and the [batch, tokens, heads, dim] output go in without copies, as with our own kernels.
//
// A plan is built once per shape and layout (heuristics mode A, the first engine that finalizes and has no
// NONDETERMINISTIC numerical note: a run must repeat bit for bit) and cached. Its first call also runs the engine's
// own kernel on the same inputs and compares the two (outputs within 5% of the largest value, lse within 1e-3):
// this code was written without a GPU at hand, and a wrong descriptor would give errors of order 100%, not 1%.
// A plan that fails the comparison is dropped (one warning line) and our kernel serves those shapes.
//
// Without cuDNN >= 9.13.1 at build time (and in the CPU emulator of the kernels), only the selection and the
// counters exist and every call runs the engine's own kernel.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backends/cuda/attention_impl.h"
#include "engine/backends/cuda/cuda_common.cuh"

#if defined(ENG_WITH_CUDNN) && defined(CUDNN_VERSION) && CUDNN_VERSION >= 91301
#define ENG_CUDNN_SDPA 1
#if CUDNN_VERSION >= 91700
#define ENG_CUDNN_SDPA_BWD 1
#endif
#endif

namespace eng::cuda {

// ---------------------------------------------------------------- selection and counters

namespace {

AttentionImpl impl_from_env() {
  const char* e = std::getenv("ENG_ATTENTION");
  if (!e || !*e || std::strcmp(e, "auto") == 0) return AttentionImpl::Auto;
  if (std::strcmp(e, "own") == 0) return AttentionImpl::Own;
  if (std::strcmp(e, "cudnn") == 0) return AttentionImpl::Cudnn;
  ENG_FAIL("ENG_ATTENTION={}: expected auto, own or cudnn", e);
}

std::once_flag g_env_once;
std::atomic<int> g_impl{int(AttentionImpl::Auto)};
std::atomic<int64_t> g_counts[4];  // cudnn fwd, cudnn bwd, own fwd, own bwd

void read_env_once() {
  std::call_once(g_env_once, [] { g_impl = int(impl_from_env()); });
}

}  // namespace

void set_attention_impl(AttentionImpl impl) {
  read_env_once();
  g_impl = int(impl);
}

AttentionImpl attention_impl() {
  read_env_once();
  return AttentionImpl(g_impl.load());
}

const char* attention_impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::Auto: return "auto";
    case AttentionImpl::Own: return "own";
    case AttentionImpl::Cudnn: return "cudnn";
  }
  return "?";
}

AttentionCounts attention_counts() {
  AttentionCounts c;
  c.cudnn_forward = g_counts[0];
  c.cudnn_backward = g_counts[1];
  c.own_forward = g_counts[2];
  c.own_backward = g_counts[3];
  return c;
}

void count_attention_call(bool cudnn, bool forward) { g_counts[(cudnn ? 0 : 2) + (forward ? 0 : 1)]++; }

bool cudnn_attention_compiled() {
#ifdef ENG_CUDNN_SDPA
  return true;
#else
  return false;
#endif
}

#ifndef ENG_CUDNN_SDPA

// ---------------------------------------------------------------- without cuDNN's SDPA: our kernel always

struct CudnnAttention {};

std::string cudnn_attention_report() {
  return "cuDNN fused attention: not in this build (it needs cuDNN >= 9.13.1 headers and library when building)";
}

std::string cudnn_attention_operation_check(int64_t, int64_t, int64_t, int64_t, bool) {
  return "this build has no cuDNN fused attention";
}

namespace {
bool refuse(const AttentionArgs& a, const char* op) {
  if (a.dtype != DType::BF16) return false;
  ENG_CHECK(attention_impl() != AttentionImpl::Cudnn,
            "{}: ENG_ATTENTION=cudnn, but this build has no cuDNN fused attention (it needs cuDNN >= 9.13.1 when "
            "building)",
            op);
  return false;
}
}  // namespace

bool CudaBackend::cudnn_attention_forward(const AttentionArgs& a) { return refuse(a, "attention_forward"); }
bool CudaBackend::cudnn_attention_backward(const AttentionArgs& a) { return refuse(a, "attention_backward"); }

#else  // ENG_CUDNN_SDPA

// ---------------------------------------------------------------- cuDNN backend descriptors

namespace {

std::string status_text(cudnnStatus_t st) {
  char msg[512] = {0};
  cudnnGetLastErrorString(msg, sizeof msg);
  std::string s = cudnnGetErrorString(st);
  if (msg[0]) s += fmt::format(" ({})", msg);
  return s;
}

// An owned cudnnBackendDescriptor_t.
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptorType_t type, cudnnStatus_t* st) {
    *st = cudnnBackendCreateDescriptor(type, &d_);
    if (*st != CUDNN_STATUS_SUCCESS) d_ = nullptr;
  }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(o.d_) { o.d_ = nullptr; }
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }
  // For attributes that take descriptors by address (an array of one).
  const cudnnBackendDescriptor_t* ptr() const { return &d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// Builds descriptors and remembers the first call that failed (then every later step is skipped).
struct Builder {
  std::string error;
  bool ok() const { return error.empty(); }
  void check(cudnnStatus_t st, const char* what) {
    if (ok() && st != CUDNN_STATUS_SUCCESS) error = fmt::format("{}: {}", what, status_text(st));
  }
  Desc make(cudnnBackendDescriptorType_t type, const char* what) {
    if (!ok()) return Desc();
    cudnnStatus_t st;
    Desc d(type, &st);
    check(st, what);
    return d;
  }
  void set(const Desc& d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n,
           const void* value, const char* what) {
    if (ok()) check(cudnnBackendSetAttribute(d.get(), name, type, n, value), what);
  }
  void finalize(const Desc& d, const char* what) {
    if (ok()) check(cudnnBackendFinalize(d.get()), what);
  }
};

constexpr int64_t kAlign = 16;  // bytes: every data pointer and row must be this aligned (checked per call)

Desc tensor(Builder& b, int64_t uid, cudnnDataType_t dt, const std::array<int64_t, 4>& dims,
            const std::array<int64_t, 4>& strides, bool by_value = false) {
  Desc t = b.make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "create a tensor descriptor");
  const int64_t align = by_value ? 4 : kAlign;
  b.set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor data type");
  b.set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data(), "tensor dimensions");
  b.set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data(), "tensor strides");
  b.set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
  b.set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
  if (by_value) {
    const bool yes = true;
    b.set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes, "tensor by value");
  }
  b.finalize(t, "finalize a tensor descriptor");
  return t;
}

// Tensor uids in the graphs (and the variant packs).
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kScale, kDO, kDQ, kDK, kDV };

struct Plan {
  bool usable = false;
  std::string what;           // the shapes, for reports
  std::string why;            // why it is not used (when !usable)
  bool checked = false;       // compared with the engine's kernel on its first call
  std::vector<Desc> keep;     // tensors, operation, graph, engine config: alive as long as the plan
  Desc plan;
  int64_t workspace = 0, engine = -1;
};

}  // namespace

struct CudnnAttention {
  std::mutex mu;
  cudnnHandle_t handle = nullptr;
  std::string handle_error;  // why there is no handle
  std::map<std::array<int64_t, 19>, std::unique_ptr<Plan>> plans;  // by plan_key
};

namespace {

std::mutex g_report_mu;
std::vector<std::string>* g_report = new std::vector<std::string>();  // never freed: read until exit

void add_report(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_report_mu);
  g_report->push_back(line);
}

// The operand layout and alignment cuDNN's SDPA needs, for a bf16 call: null when it qualifies, else the reason
// (runs on every call, so it allocates nothing).
const char* unsupported(const AttentionArgs& a, bool backward) {
  if (a.head_dim != a.v_dim) return "the head dim differs from the value dim";
  if (a.head_dim % 8 != 0 || a.head_dim > 128) return "the head dim is not a multiple of 8 up to 128";
  for (const int64_t* s : {a.q_strides, a.k_strides, a.v_strides, a.o_strides})
    for (int i = 0; i < 3; i++)
      if (s[i] % 8 != 0) return "a row stride is not a multiple of 8 elements";
  const void* ptrs[] = {a.q, a.k, a.v, a.out, a.lse, a.dout, a.dq, a.dk, a.dv};
  for (int i = 0; i < (backward ? 9 : 5); i++)
    if (reinterpret_cast<uintptr_t>(ptrs[i]) % kAlign != 0) return "an operand is not aligned to 16 bytes";
  return nullptr;
}

using PlanKey = std::array<int64_t, 19>;  // direction, sizes, the four operands' strides as given
PlanKey plan_key(const AttentionArgs& a, bool backward) {
  PlanKey key = {backward, a.batch, a.heads, a.tq, a.tk, a.head_dim, a.v_dim};
  int64_t* k = key.data() + 7;
  for (const int64_t* s : {a.q_strides, a.k_strides, a.v_strides, a.o_strides}) k = std::copy(s, s + 3, k);
  return key;
}

// Heuristics, then the first engine that is deterministic and finalizes into an execution plan.
void choose_engine(Builder& b, cudnnHandle_t handle, Plan& p, const Desc& graph) {
  Desc heur = b.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "create the heuristics descriptor");
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  b.set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, graph.ptr(), "heuristics graph");
  b.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
  b.finalize(heur, "finalize the heuristics");
  if (!b.ok()) return;
  int64_t count = 0;
  b.check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                   nullptr),
          "count the heuristics' engine configs");
  if (!b.ok()) return;
  if (count == 0) {
    b.error = "the heuristics offer no engine for this graph";
    return;
  }
  std::vector<Desc> cfgs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; i++) {
    cfgs.push_back(b.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "create an engine config descriptor"));
    raw.push_back(cfgs.back().get());
  }
  if (!b.ok()) return;
  int64_t got = 0;
  b.check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                   raw.data()),
          "read the heuristics' engine configs");
  if (!b.ok()) return;
  std::vector<std::string> refused;
  for (int64_t i = 0; i < got && i < count; i++) {
    Builder e;
    Desc engine = e.make(CUDNN_BACKEND_ENGINE_DESCRIPTOR, "create an engine descriptor");
    cudnnBackendDescriptor_t engine_raw = engine.get();
    int64_t n = 0;
    if (e.ok())
      e.check(cudnnBackendGetAttribute(cfgs[i].get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                       &engine_raw),
              "read the config's engine");
    int64_t index = -1;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t note_count = 0;
    if (e.ok()) {
      e.check(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index),
              "read the engine index");
      e.check(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                       CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &note_count, notes),
              "read the engine's numerical notes");
    }
    bool deterministic = true;
    for (int64_t j = 0; j < note_count && j < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; j++)
      if (notes[j] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) deterministic = false;
    if (e.ok() && !deterministic) {
      refused.push_back(fmt::format("engine {}: nondeterministic", index));
      continue;
    }
    Desc plan = e.make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "create the execution plan");
    e.set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "plan handle");
    e.set(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, cfgs[i].ptr(), "plan config");
    e.finalize(plan, "finalize the execution plan");
    int64_t workspace = 0;
    if (e.ok())
      e.check(cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                       &workspace),
              "read the plan's workspace size");
    if (!e.ok()) {
      refused.push_back(fmt::format("engine {}: {}", index, e.error));
      continue;
    }
    p.plan = std::move(plan);
    p.keep.push_back(std::move(cfgs[i]));
    p.keep.push_back(std::move(heur));
    p.workspace = workspace;
    p.engine = index;
    return;
  }
  std::string all;
  for (const std::string& r : refused) all += (all.empty() ? "" : "; ") + r;
  b.error = fmt::format("no deterministic engine finalizes ({})", all.empty() ? "none offered" : all);
}

// The SDPA forward or backward operation for these operands, finalized (no handle needed); its tensors go to keep.
Desc sdpa_operation(Builder& b, const AttentionArgs& a, bool backward, std::vector<Desc>& keep) {
  const RowStrides qs = a.q_rows(), ks = a.k_rows(), vs = a.v_rows(), os = a.o_rows();
  const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  auto rows = [&](int64_t uid, const RowStrides& s, int64_t tokens, int64_t dim) {
    return tensor(b, uid, bf, {a.batch, a.heads, tokens, dim}, {s.b, s.h, s.t, 1});
  };
  keep.push_back(rows(kQ, qs, a.tq, a.head_dim));
  keep.push_back(rows(kK, ks, a.tk, a.head_dim));
  keep.push_back(rows(kV, vs, a.tk, a.v_dim));
  keep.push_back(rows(kO, os, a.tq, a.v_dim));
  keep.push_back(tensor(b, kStats, f32, {a.batch, a.heads, a.tq, 1}, {a.heads * a.tq, a.tq, 1, 1}));
  keep.push_back(tensor(b, kScale, f32, {1, 1, 1, 1}, {1, 1, 1, 1}, true));
  // Raw handles: keep grows below, and the descriptors it owns stay where they are.
  const size_t first = keep.size() - 6;
  const cudnnBackendDescriptor_t q = keep[first].get(), k = keep[first + 1].get(), v = keep[first + 2].get(),
                                 o = keep[first + 3].get(), stats = keep[first + 4].get(), scale = keep[first + 5].get();
  Desc op;
  if (!backward) {
    op = b.make(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "create the SDPA forward operation");
    const cudnnBackendAttributeType_t T = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, T, 1, &q, "SDPA forward Q");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, T, 1, &k, "SDPA forward K");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, T, 1, &v, "SDPA forward V");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, T, 1, &o, "SDPA forward O");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, T, 1, &stats, "SDPA forward Stats");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, T, 1, &scale, "SDPA forward scale");
    b.finalize(op, "finalize the SDPA forward operation");
  } else {
#ifdef ENG_CUDNN_SDPA_BWD
    keep.push_back(rows(kDO, os, a.tq, a.v_dim));
    keep.push_back(rows(kDQ, qs, a.tq, a.head_dim));
    keep.push_back(rows(kDK, ks, a.tk, a.head_dim));
    keep.push_back(rows(kDV, vs, a.tk, a.v_dim));
    const cudnnBackendDescriptor_t dout = keep[first + 6].get(), dq = keep[first + 7].get(), dk = keep[first + 8].get(),
                                   dv = keep[first + 9].get();
    op = b.make(CUDNN_BACKEND_OPERATION_SDPA_BWD_DESCRIPTOR, "create the SDPA backward operation");
    const cudnnBackendAttributeType_t T = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_QDESC, T, 1, &q, "SDPA backward Q");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_KDESC, T, 1, &k, "SDPA backward K");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_VDESC, T, 1, &v, "SDPA backward V");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_ODESC, T, 1, &o, "SDPA backward O");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DODDESC, T, 1, &dout, "SDPA backward dO");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_STATSDESC, T, 1, &stats, "SDPA backward Stats");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_SCALEDESC, T, 1, &scale, "SDPA backward scale");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DQDESC, T, 1, &dq, "SDPA backward dQ");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DKDESC, T, 1, &dk, "SDPA backward dK");
    b.set(op, CUDNN_ATTR_OPERATION_SDPA_BWD_DVDESC, T, 1, &dv, "SDPA backward dV");
    b.finalize(op, "finalize the SDPA backward operation");
#endif
  }
  return op;
}

std::unique_ptr<Plan> build_plan(cudnnHandle_t handle, const AttentionArgs& a, bool backward) {
  auto p = std::make_unique<Plan>();
  p->what = fmt::format("{} [batch {}, heads {}, tq {}, tk {}, dim {}]{}", backward ? "backward" : "forward", a.batch,
                        a.heads, a.tq, a.tk, a.head_dim, a.strided() ? " strided" : "");
  const int64_t cudnn_version = int64_t(cudnnGetVersion());
  if (cudnn_version < (backward ? 91700 : 91301)) {
    p->why = fmt::format("cuDNN {} at run time; the SDPA {} operation needs {}", cudnn_version,
                         backward ? "backward" : "forward", backward ? "9.17" : "9.13.1");
    return p;
  }
#ifndef ENG_CUDNN_SDPA_BWD
  if (backward) {
    p->why = "built with cuDNN headers older than 9.17 (no SDPA backward operation)";
    return p;
  }
#endif
  Builder b;
  Desc op = sdpa_operation(b, a, backward, p->keep);
  Desc graph = b.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "create the operation graph");
  b.set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph handle");
  b.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, op.ptr(), "graph operations");
  b.finalize(graph, "finalize the operation graph");
  if (b.ok()) choose_engine(b, handle, *p, graph);
  p->keep.push_back(std::move(op));
  p->keep.push_back(std::move(graph));
  if (!b.ok()) {
    p->why = b.error;
    return p;
  }
  p->usable = true;
  return p;
}

// ---------------------------------------------------------------- the first-call comparison

// The rows of a strided [batch, heads, tokens, dim] bf16 operand, read back to the host as dense f32 (a one-time
// check, so a plain synchronous copy of the span the rows cover).
std::vector<float> read_rows(const void* p, const RowStrides& s, int64_t b, int64_t h, int64_t t, int64_t dim) {
  const int64_t span = (b - 1) * s.b + (h - 1) * s.h + (t - 1) * s.t + dim;
  std::vector<bf16> raw(static_cast<size_t>(span));
  CUDA_CHECK(cudaMemcpy(raw.data(), p, size_t(span) * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> out;
  out.reserve(size_t(b * h * t * dim));
  for (int64_t i = 0; i < b; i++)
    for (int64_t j = 0; j < h; j++)
      for (int64_t r = 0; r < t; r++)
        for (int64_t d = 0; d < dim; d++) out.push_back(float(raw[size_t(i * s.b + j * s.h + r * s.t + d)]));
  return out;
}

std::vector<float> read_f32(const void* p, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  CUDA_CHECK(cudaMemcpy(out.data(), p, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}

// max |x - ref| against the tolerance rel * max(floor, max |ref|); a NaN anywhere fails. Appends a note.
bool agrees(const char* name, const std::vector<float>& x, const std::vector<float>& ref, double rel, double floor,
            std::string* note) {
  double diff = 0, mx = floor;
  bool nan = false;
  for (size_t i = 0; i < ref.size(); i++) {
    if (std::isnan(x[i]) || std::isnan(ref[i])) nan = true;
    diff = std::max(diff, std::fabs(double(x[i]) - double(ref[i])));
    mx = std::max(mx, std::fabs(double(ref[i])));
  }
  const bool ok = !nan && diff <= rel * mx;
  *note += fmt::format("{}{} max diff {:.3g} of {:.3g}{}", note->empty() ? "" : ", ", name, diff, mx, nan ? " (NaN)" : "");
  return ok;
}

}  // namespace

std::string cudnn_attention_report() {
  std::string s = fmt::format("cuDNN fused attention: built with cuDNN {}.{}.{}, running cuDNN {}; selection {}",
                              CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL, cudnnGetVersion(),
                              attention_impl_name(attention_impl()));
  std::lock_guard<std::mutex> lock(g_report_mu);
  for (const std::string& line : *g_report) s += "\n  " + line;
  return s;
}

std::string cudnn_attention_operation_check(int64_t batch, int64_t heads, int64_t tokens, int64_t dim, bool packed_qkv) {
  AttentionArgs a;
  a.dtype = DType::BF16;
  a.batch = batch;
  a.heads = heads;
  a.tq = a.tk = tokens;
  a.head_dim = a.v_dim = dim;
  if (packed_qkv) {  // q, k, v as views of a [batch, tokens, 3 heads dim] projection, out as [batch, tokens, heads, dim]
    for (int64_t* st : {a.q_strides, a.k_strides, a.v_strides}) {
      st[0] = tokens * 3 * heads * dim;
      st[1] = dim;
      st[2] = 3 * heads * dim;
    }
    a.o_strides[0] = tokens * heads * dim;
    a.o_strides[1] = dim;
    a.o_strides[2] = heads * dim;
  }
  for (bool backward : {false, true}) {
#ifndef ENG_CUDNN_SDPA_BWD
    if (backward) break;
#endif
    Builder b;
    std::vector<Desc> keep;
    Desc op = sdpa_operation(b, a, backward, keep);
    if (!b.ok()) return fmt::format("SDPA {}: {}", backward ? "backward" : "forward", b.error);
  }
  return "";
}

namespace {

// Runs a usable plan. False (with *why) when cuDNN refuses to execute it.
bool execute(cudnnHandle_t handle, int device, Plan& p, const AttentionArgs& a, bool backward, std::string* why) {
  const float scale = float(a.scale);
  const int64_t uids[] = {kQ, kK, kV, kO, kStats, kScale, kDO, kDQ, kDK, kDV};
  void* const ptrs[] = {const_cast<void*>(a.q), const_cast<void*>(a.k), const_cast<void*>(a.v), a.out, a.lse,
                        const_cast<float*>(&scale), const_cast<void*>(a.dout), a.dq, a.dk, a.dv};
  const int64_t n = backward ? 10 : 6;  // the forward's operands come first
  DeviceBuffer workspace(device, size_t(p.workspace));
  void* ws = workspace.get();
  Builder b;
  Desc pack = b.make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "create the variant pack");
  b.set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids, "pack uids");
  b.set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs, "pack pointers");
  b.set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws, "pack workspace");
  b.finalize(pack, "finalize the variant pack");
  if (b.ok()) b.check(cudnnBackendExecute(handle, p.plan.get(), pack.get()), "cudnnBackendExecute");
  if (!b.ok()) *why = b.error;
  return b.ok();
}

}  // namespace

// The shared path of both directions: find or build the plan, run it, and on its first call compare it with the
// engine's own kernel. True when cuDNN's results stand in the outputs.
static bool run_cudnn_attention(CudaBackend& be, std::shared_ptr<CudnnAttention>& state, std::once_flag& once,
                                const AttentionArgs& a, bool backward) {
  const AttentionImpl impl = attention_impl();
  if (impl == AttentionImpl::Own || a.dtype != DType::BF16) return false;
  const char* op = backward ? "attention_backward" : "attention_forward";
  const bool forced = impl == AttentionImpl::Cudnn;
  if (const char* bad = unsupported(a, backward)) {
    ENG_CHECK(!forced, "{}: ENG_ATTENTION=cudnn, but cuDNN's fused attention cannot take this call: {}", op, bad);
    return false;
  }
  std::call_once(once, [&] {
    auto s = std::make_shared<CudnnAttention>();
    const cudnnStatus_t st = cudnnCreate(&s->handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      s->handle = nullptr;
      s->handle_error = "cudnnCreate: " + status_text(st);
      add_report(s->handle_error);
    }
    state = std::move(s);
  });
  CudnnAttention& s = *state;
  if (!s.handle) {
    ENG_CHECK(!forced, "{}: ENG_ATTENTION=cudnn, but {}", op, s.handle_error);
    return false;
  }
  Plan* p;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    std::unique_ptr<Plan>& slot = s.plans[plan_key(a, backward)];
    if (!slot) {
      slot = build_plan(s.handle, a, backward);
      add_report(slot->usable ? fmt::format("{}: engine {}, workspace {} bytes", slot->what, slot->engine, slot->workspace)
                              : fmt::format("{}: not used: {}", slot->what, slot->why));
    }
    p = slot.get();
  }
  if (!p->usable) {
    ENG_CHECK(!forced, "{}: ENG_ATTENTION=cudnn, but cuDNN has no plan for {}: {}", op, p->what, p->why);
    return false;
  }
  // A plan that fails to run, or disagrees with our kernel on its first call, is dropped: our kernel serves its
  // shapes from then on (and the caller runs it now, over whatever cuDNN wrote).
  auto drop = [&](const std::string& why) {
    ENG_CHECK(!forced, "{}: ENG_ATTENTION=cudnn, but cuDNN's plan for {} is not usable: {}", op, p->what, why);
    {
      std::lock_guard<std::mutex> lock(s.mu);
      p->usable = false;
      p->why = why;
    }
    add_report(fmt::format("{}: dropped: {}", p->what, why));
    std::fprintf(stderr, "[attention] warning: cuDNN's fused attention for %s: %s; the engine's kernel serves it\n",
                 p->what.c_str(), why.c_str());
    return false;
  };
  std::string why;
  if (p->checked) return execute(s.handle, be.device(), *p, a, backward, &why) || drop(why);

  // First call of this plan: our kernel's results, then cuDNN's, compared.
  auto results = [&]() {
    std::vector<std::vector<float>> r;
    if (!backward) {
      r.push_back(read_rows(a.out, a.o_rows(), a.batch, a.heads, a.tq, a.v_dim));
      r.push_back(read_f32(a.lse, a.batch * a.heads * a.tq));
    } else {
      r.push_back(read_rows(a.dq, a.q_rows(), a.batch, a.heads, a.tq, a.head_dim));
      r.push_back(read_rows(a.dk, a.k_rows(), a.batch, a.heads, a.tk, a.head_dim));
      r.push_back(read_rows(a.dv, a.v_rows(), a.batch, a.heads, a.tk, a.v_dim));
    }
    return r;
  };
  if (backward)
    be.own_attention_backward(a);
  else
    be.own_attention_forward(a);
  const auto ours = results();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    p->checked = true;  // one comparison per plan, whatever its outcome
  }
  if (!execute(s.handle, be.device(), *p, a, backward, &why)) return drop(why);
  const auto theirs = results();
  // bf16 results: a few roundings of 2^-8 apart at most; a wrong layout or scale is off by order 1.
  const char* names[] = {backward ? "dq" : "out", backward ? "dk" : "lse", "dv"};
  std::string note;
  bool ok = true;
  for (size_t i = 0; i < ours.size(); i++) {
    const bool is_lse = !backward && i == 1;
    ok = agrees(names[i], theirs[i], ours[i], is_lse ? 1e-3 : 0.05, is_lse ? 1.0 : 1e-6, &note) && ok;
  }
  if (!ok) return drop("disagrees with the engine's kernel: " + note);
  add_report(fmt::format("{}: first call agrees with the engine's kernel: {}", p->what, note));
  return true;
}

bool CudaBackend::cudnn_attention_forward(const AttentionArgs& a) {
  return run_cudnn_attention(*this, cudnn_, cudnn_once_, a, false);
}

bool CudaBackend::cudnn_attention_backward(const AttentionArgs& a) {
  return run_cudnn_attention(*this, cudnn_, cudnn_once_, a, true);
}

#endif  // ENG_CUDNN_SDPA

}  // namespace eng::cuda
