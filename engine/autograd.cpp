// autograd.cpp: recording nodes and running the backward pass.
#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace eng {

static thread_local bool g_grad_mode = true;

Node::~Node() {
  // Take over the edges of every node that dies with this one, so destruction is a loop, not a recursion.
  std::vector<std::shared_ptr<Node>> pending;
  pending.swap(next);
  while (!pending.empty()) {
    std::shared_ptr<Node> n = std::move(pending.back());
    pending.pop_back();
    if (n && n.use_count() == 1) {
      for (auto& m : n->next) pending.push_back(std::move(m));
      n->next.clear();
    }
  }
}

bool grad_mode_enabled() { return g_grad_mode; }
NoGradGuard::NoGradGuard() : prev_(g_grad_mode) { g_grad_mode = false; }
NoGradGuard::~NoGradGuard() { g_grad_mode = prev_; }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// The node through which gradient reaches `t`: its grad_fn, or (for a leaf) its accumulator.
static std::shared_ptr<Node> gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  TensorImpl* impl = t.impl_ptr();
  if (impl->grad_fn) return impl->grad_fn;
  if (!impl->grad_acc) {
    impl->grad_acc = std::make_shared<Node>();
    impl->grad_acc->name = "leaf";
    impl->grad_acc->leaf = t.impl_shared();
  }
  return impl->grad_acc;
}

Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!any_requires_grad(inputs)) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->fn = std::move(fn);
  for (const Tensor& t : inputs) {
    node->next.push_back(gradient_edge(t));
    node->input_shapes.push_back(t.defined() ? t.shape() : Shape{});
    node->input_dtypes.push_back(t.defined() ? t.dtype() : DType::F32);
  }
  // A fresh impl: `out` may be a view whose impl other handles share.
  auto impl = std::make_shared<TensorImpl>(*out.impl_ptr());
  impl->requires_grad = false;
  impl->grad.reset();
  impl->grad_acc.reset();
  impl->grad_fn = std::move(node);
  return Tensor(impl);
}

static void accumulate(std::unordered_map<Node*, Tensor>& grads, Node* n, const Tensor& g) {
  auto it = grads.find(n);
  if (it == grads.end())
    grads.emplace(n, g);
  else
    it->second = add(it->second, g);
}

void run_backward(const Tensor& root, const Tensor& grad_in, bool retain_graph) {
  ENG_CHECK(root.requires_grad(), "backward() on a tensor that does not require grad (no input of its graph requires grad)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    ENG_CHECK(root.numel() == 1, "backward() without a gradient needs a one-element output, got shape {}; pass a gradient",
              shape_str(root.shape()));
    grad = Tensor::ones(root.shape(), root.dtype(), root.device());
  }
  ENG_CHECK(grad.shape() == root.shape(), "backward(): gradient shape {} does not match output shape {}",
            shape_str(grad.shape()), shape_str(root.shape()));
  NoGradGuard no_grad;
  std::shared_ptr<Node> start = gradient_edge(root);

  // Iterative post-order DFS: `order` ends up with every node after all nodes that feed it gradient.
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, size_t>> stack{{start.get(), 0}};
  seen.insert(start.get());
  while (!stack.empty()) {
    auto& [n, i] = stack.back();
    if (i < n->next.size()) {
      Node* m = n->next[i++].get();
      if (m && !seen.count(m)) {
        seen.insert(m);
        stack.push_back({m, 0});
      }
    } else {
      order.push_back(n);
      stack.pop_back();
    }
  }

  std::unordered_map<Node*, Tensor> grads;
  grads.emplace(start.get(), grad);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    auto git = grads.find(n);
    if (git == grads.end()) continue;  // no gradient flowed here
    Tensor g = git->second;
    grads.erase(git);
    if (auto leaf = n->leaf.lock()) {  // a leaf's accumulator: grads add up across backward calls
      Tensor lt(leaf);
      ENG_CHECK(g.shape() == lt.shape(), "internal: gradient {} for leaf of shape {}", shape_str(g.shape()),
                shape_str(lt.shape()));
      Tensor gd = g.to(lt.dtype()).contiguous();
      // A copy, never an alias: the incoming gradient may be a view of another tensor's buffer.
      lt.set_grad(lt.grad().defined() ? add(lt.grad(), gd) : gd.clone());
      continue;
    }
    if (n->leaf.expired() && n->name == "leaf") continue;  // leaf already gone
    ENG_CHECK(!n->released, "backward through the graph a second time (op '{}'): its saved tensors were freed; "
              "pass retain_graph=true to the first backward", n->name);
    std::vector<Tensor> gin = n->fn(g);
    ENG_CHECK(gin.size() == n->next.size(), "internal: op '{}' returned {} gradients for {} inputs", n->name, gin.size(),
              n->next.size());
    for (size_t i = 0; i < gin.size(); i++) {
      if (!n->next[i] || !gin[i].defined()) continue;
      ENG_CHECK(gin[i].shape() == n->input_shapes[i], "op '{}': gradient for input {} has shape {}, input has shape {}",
                n->name, i, shape_str(gin[i].shape()), shape_str(n->input_shapes[i]));
      accumulate(grads, n->next[i].get(), gin[i]);
    }
    if (!retain_graph) {
      n->fn = nullptr;
      n->released = true;
    }
  }
}

}  // namespace eng
