// attention_impl.h: which implementation runs fused attention on CUDA, and what it did.
//
// bf16 attention on a GPU has two implementations:
//   - cuDNN's fused scaled-dot-product attention (the backend API's SDPA forward and backward operations, cuDNN
//     >= 9.13.1 for the forward and >= 9.17 for the backward), used where cuDNN offers a deterministic engine for
//     the shapes, the strides and the GPU;
//   - the engine's own kernels (cuda_attention.cu: tensor cores for head dims that are multiples of 16 up to 64),
//     used for everything else and for every f32 / f64 call.
// Each cuDNN plan is checked once, on its first call, against the engine's own kernel on the same inputs; a plan
// that disagrees is dropped with a one-line warning and the engine's kernel runs instead (under Cudnn, it throws).
//
// The choice is process-wide. It starts from the environment variable ENG_ATTENTION (auto, own or cudnn; unset
// means auto) and can be changed with set_attention_impl (tests and benchmarks do, to measure both).
//
// Plain C++ with no CUDA header; the definitions are in cuda_attention_cudnn.cu, so it links only in a CUDA build.
#pragma once
#include <cstdint>
#include <string>

namespace eng::cuda {

enum class AttentionImpl {
  Auto,   // cuDNN where it has a deterministic engine that agrees with ours, else the engine's own kernel
  Own,    // the engine's own kernel always
  Cudnn,  // cuDNN for every bf16 call, or an error naming why it cannot (for tests and benchmarks)
};

void set_attention_impl(AttentionImpl impl);
AttentionImpl attention_impl();
const char* attention_impl_name(AttentionImpl impl);

// Sets the implementation for one scope and restores the previous one after it.
class AttentionImplScope {
 public:
  explicit AttentionImplScope(AttentionImpl impl) : prev_(attention_impl()) { set_attention_impl(impl); }
  ~AttentionImplScope() { set_attention_impl(prev_); }
  AttentionImplScope(const AttentionImplScope&) = delete;
  AttentionImplScope& operator=(const AttentionImplScope&) = delete;

 private:
  AttentionImpl prev_;
};

// Calls so far that ran on each implementation (whole process, every device).
struct AttentionCounts {
  int64_t cudnn_forward = 0, cudnn_backward = 0, own_forward = 0, own_backward = 0;
};
AttentionCounts attention_counts();

// True when this build has the cuDNN path (cuDNN's headers and library, version >= 9.13.1 at build time).
bool cudnn_attention_compiled();

// Builds and finalizes cuDNN's SDPA forward and backward operations (tensors and operation, no graph, engine or
// plan) for one bf16 attention of these sizes, contiguous or laid out as the views of a packed qkv projection. That
// needs no GPU, and cuDNN itself checks the operations' attributes, so the CPU test suite catches a descriptor
// mistake on a machine without a GPU. Empty when both finalize, else the first failure.
std::string cudnn_attention_operation_check(int64_t batch, int64_t heads, int64_t tokens, int64_t dim, bool packed_qkv);

// One line per cuDNN plan built or refused so far (shapes, engine, the first-call comparison, or the reason it is
// not used), after a first line with the cuDNN versions. For benchmark logs and bug reports.
std::string cudnn_attention_report();

}  // namespace eng::cuda
