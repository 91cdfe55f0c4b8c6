// autograd.h: the tape. An op that has an input requiring grad records a Node whose backward function
// maps the gradient of its output to gradients of its inputs. Nodes point at the nodes of their inputs
// (edges), never at the input tensors themselves: a backward keeps alive only what it captured.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace eng {

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct Node {
  std::string name;                          // the op, for error messages and profiles
  std::vector<std::shared_ptr<Node>> next;   // one per input; nullptr where the input needs no grad
  std::vector<Shape> input_shapes;           // to check what backward returns
  std::vector<DType> input_dtypes;
  BackwardFn fn;                             // empty for leaf accumulators
  std::weak_ptr<TensorImpl> leaf;            // set for a leaf's accumulator
  bool released = false;                     // fn dropped after a backward without retain_graph
  ~Node();                                   // iterative: a deep graph must not overflow the stack
};

bool grad_mode_enabled();

// Disables recording in its scope (inference, optimizer updates, backward functions themselves).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True when recording is on and one of the inputs requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Attaches a node to `out` when any input requires grad (and grad mode is on); returns `out`.
// `fn` returns one gradient per input, in order; an undefined Tensor means "no gradient".
Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn fn);

// Runs backward from `root` with gradient `grad`.
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph);

}  // namespace eng
