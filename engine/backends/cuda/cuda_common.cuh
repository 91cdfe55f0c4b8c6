// cuda_common.cuh: what every CUDA kernel file of the backend shares: the CudaBackend class (its methods are
// defined by family in cuda_*.cu), the per-op scope (device + NVTX range), strided geometry, dtype
// dispatch, bf16 on the device, temporary device buffers and deterministic warp/block reductions.
//
// Files:  cuda_backend.cu    allocator, device registry, host<->device copies, capabilities
//         cuda_elementwise.cu copy, fill, unary, binary, where (+ the GEMM epilogue kernel)
//         cuda_reduce.cu     reduce, arg_reduce
//         cuda_nn.cu         softmax / log_softmax, layer norm (forward and backward)
//         cuda_index.cu      index_select, index_add, gather, scatter_add, sort, topk
//         cuda_random.cu     random_uniform, random_normal (Philox, engine/rng.h)
//         cuda_optim.cu      fused AdamW, one tensor or many per launch (engine/optim_math.h); global_norm,
//                            sum_squares
//         cuda_gemm.cu       GEMM through cuBLASLt (cuBLAS as the fallback), epilogues, TF32 / bf16
//         cuda_attention.cu  fused attention forward / backward (the engine's own kernels)
//         cuda_attention_cudnn.cu  cuDNN's fused attention for bf16, where it runs (attention_impl.h)
//         cuda_routing.cu    cumsum, one_hot, bincount, grouped GEMM (cuBLAS grouped batched) for expert layers
//
// Determinism: no kernel uses atomics to combine values. Every reduction runs in an order fixed by the shapes
// alone (never by the number of SMs or by timing), so a run repeats bit for bit on the same GPU model.
// Everything runs on the legacy default stream of the backend's device, so work is ordered and a temporary
// buffer handed back to the caching allocator after a launch is only reused by later work.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "engine/allocator.h"
#include "engine/backend.h"
#include "engine/backends/cuda/cuda_check.h"
#include "engine/nvtx.h"

namespace eng {
namespace cuda {

struct GemmState;  // cuBLAS / cuBLASLt handles, workspace and the algorithm cache (cuda_gemm.cu)
struct CudnnAttention;  // the cuDNN handle and the fused-attention plans (cuda_attention_cudnn.cu)

// Counts one fused-attention call for attention_counts() (attention_impl.h).
void count_attention_call(bool cudnn, bool forward);

// ---------------------------------------------------------------- index faults

// An out-of-range index met by an indexing kernel (index_select, index_add, gather, scatter_add). The kernel skips
// that element (reads 0, adds nothing, touches no memory outside a tensor) and records the fault here, in device
// memory; the host reads the record after its next device-to-host copy, which waits for the kernel anyway, and
// throws there. So indexing never makes the host wait for the GPU, and a bad index still gets the ops layer's
// one-line error, one read-back later (as a device-side assert would, but without killing the context).
// Plain stores, no atomics: the threads of one kernel store the same op, dim and size and some offending value,
// each a true one; a later kernel leaves a recorded fault alone.
struct IndexFault {
  int64_t flag, op, dim, value, size;
};
enum IndexFaultOp : int64_t {
  kFaultIndexSelect = 1, kFaultIndexAdd = 2, kFaultGather = 3, kFaultScatterAdd = 4,
  kFaultOneHot = 5, kFaultBincount = 6,  // routing (cuda_routing.cu): the size is the number of classes / bins
};

__device__ inline void record_index_fault(IndexFault* f, int64_t op, int64_t dim, int64_t value, int64_t size) {
  if (f->flag) return;
  f->op = op;
  f->dim = dim;
  f->value = value;
  f->size = size;
  f->flag = 1;
}

// ---------------------------------------------------------------- the backend

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  const char* name() const override { return "cuda"; }
  int device() const { return device_; }

#include "engine/backend_overrides.inc"  // every Backend method (engine/backend_methods.inc)

  // cuDNN's fused attention for a bf16 call when attention_impl() allows it and cuDNN has a plan that passed its
  // first-call check; false means the caller runs the engine's own kernel (cuda_attention_cudnn.cu).
  bool cudnn_attention_forward(const AttentionArgs& a);
  bool cudnn_attention_backward(const AttentionArgs& a);
  // The engine's own kernels (cuda_attention.cu), also the reference each cuDNN plan is checked against.
  void own_attention_forward(const AttentionArgs& a);
  void own_attention_backward(const AttentionArgs& a);

  // C[b] = epilogue(C[b]) for a GEMM result (bias add, exact GELU, pre-activation copy); cuda_elementwise.cu.
  void gemm_epilogue(const GemmArgs& g, bool bias_done);
  // C = beta * C over a batch of row-major m x n matrices (k == 0 or alpha == 0); cuda_elementwise.cu.
  void gemm_scale_c(const GemmArgs& g);

  // The device's cuBLAS handle (a cublasHandle_t; void* keeps cuBLAS's header out of this one), made once and shared
  // by gemm and grouped_gemm (cuda_gemm.cu).
  void* blas_handle();
  // The device's IndexFault record (allocated zeroed on first use) for indexing kernels to write.
  IndexFault* index_fault();
  // After a device-to-host copy: throws the recorded index fault, if any, and clears it (cuda_backend.cu).
  void raise_index_fault();

 private:
  int device_;
  std::once_flag fault_once_;
  std::atomic<IndexFault*> fault_{nullptr};  // null until an indexing kernel needs it
  std::once_flag gemm_once_;
  std::unique_ptr<GemmState> gemm_;
  GemmState& gemm_state();
  std::once_flag cudnn_once_;
  std::shared_ptr<CudnnAttention> cudnn_;  // shared_ptr: its deleter is bound where the type is complete
};

// Every backend method opens one of these: makes the backend's device current and names the op in NVTX.
class OpScope {
 public:
  OpScope(const CudaBackend& b, const char* name) : range_(name) { CUDA_CHECK(cudaSetDevice(b.device())); }

 private:
  NvtxRange range_;
};

// ---------------------------------------------------------------- temporary device memory

// A scratch buffer from the device's caching allocator, returned when the scope ends. Safe because all work is
// stream-ordered on one stream: whoever gets the block next runs after the kernels launched here.
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t nbytes) : alloc_(&allocator_for(Device::cuda(device))), nbytes_(nbytes) {
    if (nbytes_) ptr_ = alloc_->allocate(nbytes_);
  }
  ~DeviceBuffer() {
    if (ptr_) alloc_->deallocate(ptr_, nbytes_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  void* get() const { return ptr_; }
  size_t size() const { return nbytes_; }

 private:
  Allocator* alloc_;
  size_t nbytes_;
  void* ptr_ = nullptr;
};

// ---------------------------------------------------------------- bf16 on the device

// Same bits as eng::bf16 (the upper half of an f32); conversions round to nearest even exactly like the host's.
struct bf16_t {
  uint16_t bits;
};
static_assert(sizeof(bf16_t) == sizeof(bf16), "bf16_t must match eng::bf16");

__device__ inline bf16_t float_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

// The type arithmetic runs in: T itself, f32 for bf16.
template <typename T> struct CalcOf { using type = T; };
template <> struct CalcOf<bf16_t> { using type = float; };
template <typename T> using calc_t = typename CalcOf<T>::type;

// Loads and stores through the arithmetic type.
template <typename T> __device__ inline calc_t<T> ld(const T& x) { return x; }
template <> __device__ inline float ld<bf16_t>(const bf16_t& x) { return __uint_as_float(uint32_t(x.bits) << 16); }
template <typename T> __device__ inline T st(calc_t<T> x) { return x; }
template <> __device__ inline bf16_t st<bf16_t>(float x) { return float_to_bf16(x); }

// Conversion between any two element types, as the CPU's copy converts (bf16 through f32).
template <typename D, typename S> struct Convert {
  __device__ static D run(S s) { return static_cast<D>(s); }
};
template <typename S> struct Convert<bf16_t, S> {
  __device__ static bf16_t run(S s) { return float_to_bf16(float(s)); }
};
template <typename D> struct Convert<D, bf16_t> {
  __device__ static D run(bf16_t s) { return static_cast<D>(ld<bf16_t>(s)); }
};
template <> struct Convert<bf16_t, bf16_t> {
  __device__ static bf16_t run(bf16_t s) { return s; }
};
template <typename D, typename S> __device__ inline D convert(S s) { return Convert<D, S>::run(s); }

// ---------------------------------------------------------------- dtype dispatch

// f(tag) with a value of the element type for dt: every dtype.
template <typename F> void dispatch_all(DType dt, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16_t{}); break;
    case DType::I32: f(int32_t{}); break;
    case DType::I64: f(int64_t{}); break;
  }
}
// Floating dtypes: f32, f64, bf16 (arithmetic in f32).
template <typename F> void dispatch_float(DType dt, const char* op, F f) {
  switch (dt) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16_t{}); break;
    default: ENG_FAIL("{} on cuda: dtype {} is not supported (f32, f64, bf16)", op, dtype_name(dt));
  }
}
// Data movement by element size only.
template <typename F> void dispatch_by_size(DType dt, F f) {
  switch (dtype_size(dt)) {
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    default: ENG_FAIL("internal: element size {} of dtype {}", dtype_size(dt), dtype_name(dt));
  }
}

// ---------------------------------------------------------------- strided geometry

constexpr int kMaxOperands = 4;

// The shape an elementwise kernel walks (row-major linear index) and each operand's strides, by value.
struct Geo {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxOperands][kMaxDims] = {};
};

// Geometry over ds[0]'s shape with the strides of ds[0..n); size-1 dims dropped and dims that are contiguous
// with respect to each other in every operand merged, so the common cases become one dim.
inline Geo make_geo(const TensorDesc* const ds[], int n) {
  Geo g;
  const TensorDesc& d0 = *ds[0];
  for (int d = 0; d < d0.ndim; d++) {
    if (d0.shape[d] == 1) continue;
    if (g.ndim > 0) {
      bool merge = true;
      for (int k = 0; k < n; k++) merge = merge && g.strides[k][g.ndim - 1] == ds[k]->strides[d] * d0.shape[d];
      if (merge) {
        g.shape[g.ndim - 1] *= d0.shape[d];
        for (int k = 0; k < n; k++) g.strides[k][g.ndim - 1] = ds[k]->strides[d];
        continue;
      }
    }
    g.shape[g.ndim] = d0.shape[d];
    for (int k = 0; k < n; k++) g.strides[k][g.ndim] = ds[k]->strides[d];
    g.ndim++;
  }
  return g;
}

// Element offsets of operands 0..N-1 for row-major linear index i.
template <int N> __device__ inline void geo_offsets(const Geo& g, int64_t i, int64_t* off) {
  if (g.ndim <= 1) {
    for (int k = 0; k < N; k++) off[k] = g.ndim ? i * g.strides[k][0] : 0;
    return;
  }
  for (int k = 0; k < N; k++) off[k] = 0;
  for (int d = g.ndim - 1; d >= 0; d--) {
    int64_t idx = i % g.shape[d];
    i /= g.shape[d];
    for (int k = 0; k < N; k++) off[k] += idx * g.strides[k][d];
  }
}

// Iteration space split at one dim: every position of the other dims ("lines" along dim), with per-operand
// offsets. Used by kernels that walk or index along `dim` (arg_reduce, scatter_add, sort, ...).
struct LineGeo {
  int ndim = 0;  // dims other than `dim`, size-1 dims dropped
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxOperands][kMaxDims] = {};
  int64_t lines = 1;
};

// `loop` gives the shape (its size along dim is ignored); strides[k] are operand k's strides indexed like loop's.
inline LineGeo make_line_geo(const TensorDesc& loop, int dim, const int64_t* const strides[], int n) {
  LineGeo g;
  for (int d = 0; d < loop.ndim; d++) {
    if (d == dim || loop.shape[d] == 1) continue;
    g.shape[g.ndim] = loop.shape[d];
    for (int k = 0; k < n; k++) g.strides[k][g.ndim] = strides[k][d];
    g.lines *= loop.shape[d];
    g.ndim++;
  }
  return g;
}

template <int N> __device__ inline void line_offsets(const LineGeo& g, int64_t line, int64_t* off) {
  for (int k = 0; k < N; k++) off[k] = 0;
  for (int d = g.ndim - 1; d >= 0; d--) {
    int64_t idx = line % g.shape[d];
    line /= g.shape[d];
    for (int k = 0; k < N; k++) off[k] += idx * g.strides[k][d];
  }
}

// ---------------------------------------------------------------- launch helpers

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items; the cap keeps the grid small. Results never depend on it.
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535 * 8)));
}

#define ENG_GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------- deterministic reductions

struct SumOp {
  template <typename A> __device__ A operator()(A a, A b) const { return a + b; }
};
// max / min that let NaN win, as the CPU's reductions do.
struct MaxOp {
  template <typename A> __device__ A operator()(A a, A b) const { return (b > a || b != b) ? b : a; }
};
struct MinOp {
  template <typename A> __device__ A operator()(A a, A b) const { return (b < a || b != b) ? b : a; }
};

// Butterfly over a warp: every lane ends with the same value (each step adds the same two operands on both
// partner lanes), in a fixed order.
template <typename A, typename Op> __device__ inline A warp_allreduce(A v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Over a whole block of kBlock threads (a multiple of 32): warp butterflies, then every thread combines the
// warp results in warp order. smem needs kBlock / 32 slots. All threads get the result.
template <int kBlock, typename A, typename Op> __device__ inline A block_allreduce(A v, Op op, A* smem) {
  v = warp_allreduce(v, op);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  A r = smem[0];
  for (int w = 1; w < kBlock / 32; w++) r = op(r, smem[w]);
  __syncthreads();  // smem may be reused right after
  return r;
}

// A row handled by kGroup threads: one warp (kGroup == 32, several rows per block) or the whole block.
template <int kGroup, typename A, typename Op> __device__ inline A group_allreduce(A v, Op op, A* smem) {
  if constexpr (kGroup == 32) {
    return warp_allreduce(v, op);
  } else {
    return block_allreduce<kGroup>(v, op, smem);
  }
}

}  // namespace cuda
}  // namespace eng
