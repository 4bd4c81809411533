// The reverse-mode engine: collect the graph reachable from the roots, count each node's
// consumers, then walk nodes in reverse creation order once all their consumers have delivered,
// summing gradients per output and handing each input its gradient. Leaves accumulate (+=) into
// .grad; saved tensors are freed after the walk unless the graph is retained.
#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "autograd/node.h"
#include "autograd/ops.h"

namespace cm {

namespace {
thread_local bool grad_enabled = true;
std::atomic<uint64_t> next_sequence_nr{0};
}  // namespace

bool is_grad_enabled() {
  return grad_enabled;
}
void set_grad_enabled(bool on) {
  grad_enabled = on;
}

Node::Node(std::string name) : name_(std::move(name)), seq_(next_sequence_nr++) {}

Node::~Node() {
  // Take over the inputs that die with this node and free them one at a time; each of them finds
  // its own dying inputs already moved here, so the recursion is one level deep.
  std::vector<std::shared_ptr<Node>> dying;
  auto take = [&dying](Node& n) {
    for (Edge& e : n.next_edges)
      if (e.fn && e.fn.use_count() == 1) dying.push_back(std::move(e.fn));
  };
  take(*this);
  while (!dying.empty()) {
    std::shared_ptr<Node> n = std::move(dying.back());
    dying.pop_back();
    take(*n);
  }
}

Grads FunctionNode::apply(const Grads& grad_outputs) {
  CM_CHECK(fn_ != nullptr, "backward through ", name(), " a second time: its saved tensors were ",
           "freed after the first backward (pass retain_graph=true to keep them)");
  return fn_(grad_outputs);
}

// ---- leaves
// -------------------------------------------------------------------------------------------
AccumulateGrad::AccumulateGrad(std::shared_ptr<TensorImpl> leaf)
    : Node("AccumulateGrad"), leaf_(std::move(leaf)) {
  const Tensor t(leaf_);
  outputs.push_back({t.shape(), t.dtype(), t.device()});
  pre_hooks.resize(1);
}

Grads AccumulateGrad::apply(const Grads& grad_outputs) {
  Tensor leaf(leaf_);
  Tensor g = grad_outputs[0];
  AutogradMeta& meta = leaf.ensure_autograd_meta();
  for (const GradHook& h : meta.hooks) {
    Tensor r = h(g);
    if (r.defined()) g = r;
  }
  if (g.dtype() != leaf.dtype() || g.device() != leaf.device())
    g = to(to(g, leaf.dtype()), leaf.device());
  if (!meta.grad.defined() && meta.grad_slot.defined()) {
    meta.grad = meta.grad_slot;  // the leaf's preallocated place (a view of a flat buffer)
    copy_(meta.grad, g);
  } else if (!meta.grad.defined()) {
    meta.grad = clone(g);  // never alias: the same gradient tensor may reach several leaves
  } else {
    add_(meta.grad, g);
  }
  for (const PostAccumulateHook& h : meta.post_accumulate_hooks) h(leaf);
  return {};
}

Edge gradient_edge(const Tensor& t) {
  AutogradMeta* m = t.autograd_meta();
  if (!m) return {};
  if (m->grad_fn) return {m->grad_fn, m->output_nr};
  if (!m->requires_grad) return {};
  std::shared_ptr<Node> acc = m->grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    m->grad_accumulator = acc;
  }
  return {acc, 0};
}

// ---- saved tensors
// ------------------------------------------------------------------------------------
SavedTensor::SavedTensor(const Tensor& t, const char* op) : op_(op) {
  if (!t.defined()) return;
  version_ = t.version();
  if ((recompute_ = recompute_of(t))) {
    counter_ = t.impl()->version;
    shape_ = t.shape();
    strides_ = t.strides();
    return;
  }
  data_ = t.alias_with(t.shape(), t.strides(), t.offset());
}

Tensor SavedTensor::get() const {
  if (!defined()) return data_;
  const uint64_t now = recompute_ ? counter_->value : data_.version();
  CM_CHECK(now == version_, op_, ": a tensor saved for its backward was modified by an ",
           "in-place operation (version ", now, ", saved at version ", version_,
           "); clone it before modifying it");
  if (recompute_) {
    NoGradGuard ng;
    Tensor t = recompute_->fn();
    CM_CHECK(t.shape() == shape_ && t.strides() == strides_, op_,
             ": the recomputed saved tensor has shape ", shape_str(t.shape()), " strides ",
             shape_str(t.strides()), ", the saved one had ", shape_str(shape_), " strides ",
             shape_str(strides_), " (a recompute function that does not give its tensor back)");
    return t;
  }
  return data_;
}

// ---- activation recomputation ----
namespace {
thread_local bool recompute_enabled = false;
}

bool is_recompute_enabled() {
  return recompute_enabled;
}
void set_recompute_enabled(bool on) {
  recompute_enabled = on;
}

void set_recompute(const Tensor& t, std::function<Tensor()> fn) {
  auto r = std::make_shared<Recompute>();
  r->fn = std::move(fn);
  r->version = t.version();
  t.ensure_autograd_meta().recompute = std::move(r);
}

std::shared_ptr<const Recompute> recompute_of(const Tensor& t) {
  const AutogradMeta* m = t.defined() ? t.impl()->autograd.get() : nullptr;
  if (!m || !m->recompute || m->recompute->version != t.version()) return nullptr;
  return m->recompute;
}

// ---- recording
// -----------------------------------------------------------------------------------------
bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!is_grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}
bool needs_grad(std::initializer_list<Tensor> inputs) {
  if (!is_grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward) {
  auto node = std::make_shared<FunctionNode>(name, std::move(backward));
  node->next_edges.reserve(inputs.size());
  for (const Tensor& t : inputs)
    node->next_edges.push_back(t.defined() ? gradient_edge(t) : Edge{});
  node->pre_hooks.resize(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& y = outputs[i];
    node->outputs.push_back({y.shape(), y.dtype(), y.device()});
    AutogradMeta& m = y.ensure_autograd_meta();
    CM_CHECK(!m.grad_fn, name, ": output ", i, " already has a gradient function");
    m.grad_fn = node;
    m.output_nr = uint32_t(i);
    m.requires_grad = true;
  }
}

// ---- hooks on tensors
// -------------------------------------------------------------------------------------
void Tensor::register_hook(GradHook hook) const {
  CM_CHECK(requires_grad(), "register_hook: the tensor does not require grad");
  AutogradMeta& m = ensure_autograd_meta();
  if (m.grad_fn)
    m.grad_fn->pre_hooks[m.output_nr].push_back(std::move(hook));
  else
    m.hooks.push_back(std::move(hook));
}

void Tensor::register_post_accumulate_grad_hook(PostAccumulateHook hook) const {
  CM_CHECK(requires_grad() && is_leaf(), "register_post_accumulate_grad_hook: only leaves that ",
           "require grad accumulate gradients");
  ensure_autograd_meta().post_accumulate_hooks.push_back(std::move(hook));
}

void Tensor::retain_grad() const {
  CM_CHECK(requires_grad(), "retain_grad: the tensor does not require grad");
  AutogradMeta& m = ensure_autograd_meta();
  if (!m.grad_fn || m.retains_grad) return;  // leaves keep their gradient anyway
  m.retains_grad = true;
  std::weak_ptr<TensorImpl> weak = impl_ptr();
  register_hook([weak](const Tensor& g) {
    if (auto impl = weak.lock()) {
      Tensor self(impl);
      AutogradMeta& mm = self.ensure_autograd_meta();
      if (!mm.grad.defined())
        mm.grad = cm::clone(g);
      else
        cm::add_(mm.grad, g);
    }
    return Tensor();
  });
}

// ---- the engine
// ------------------------------------------------------------------------------------------------
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
              bool retain_graph) {
  CM_CHECK(grads.empty() || grads.size() == roots.size(), "backward: ", roots.size(), " roots but ",
           grads.size(), " gradients");
  NoGradGuard no_grad;

  struct Pending {
    Grads buffer;
    int deps = 0;
  };
  std::unordered_map<Node*, Pending> pending;
  std::vector<std::shared_ptr<Node>> keep;  // holds the nodes alive during the walk

  // Seed the roots.
  std::vector<std::pair<Edge, Tensor>> seeds;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    CM_CHECK(r.requires_grad(), "backward: root ", i,
             " does not require grad (no operation on its ",
             "path involved a tensor with requires_grad)");
    Tensor g = i < grads.size() ? grads[i] : Tensor();
    if (!g.defined()) {
      CM_CHECK(r.numel() == 1,
               "backward: a gradient can be implied only for one-element roots; root ", i,
               " has shape ", shape_str(r.shape()));
      g = ones(r.shape(), {.dtype = r.dtype(), .device = r.device()});
    }
    CM_CHECK(g.shape() == r.shape(), "backward: seed gradient of shape ", shape_str(g.shape()),
             " for root of shape ", shape_str(r.shape()));
    seeds.emplace_back(gradient_edge(r), g);
  }

  // Discover the graph and count each node's consumers.
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  for (auto& [edge, g] : seeds) {
    if (seen.insert(edge.fn.get()).second) {
      stack.push_back(edge.fn.get());
      keep.push_back(edge.fn);
    }
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    pending[n].buffer.resize(n->outputs.size());
    for (const Edge& e : n->next_edges) {
      if (!e.fn) continue;
      pending[e.fn.get()].deps += 1;
      if (seen.insert(e.fn.get()).second) {
        stack.push_back(e.fn.get());
        keep.push_back(e.fn);
      }
    }
  }

  auto deliver = [&](Node* n, uint32_t slot, const Tensor& g) {
    Tensor& b = pending[n].buffer[slot];
    if (!b.defined())
      b = g;
    else
      b = add(b, g);
  };
  for (auto& [edge, g] : seeds) deliver(edge.fn.get(), edge.input_nr, g);

  // Ready nodes, latest-created first (a valid reverse topological order for ties).
  auto later = [](Node* a, Node* b) { return a->sequence_nr() < b->sequence_nr(); };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later)> ready(later);
  for (Node* n : seen)
    if (pending[n].deps == 0) ready.push(n);

  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    Grads in = std::move(pending[n].buffer);
    bool any = false;
    for (const Tensor& g : in) any = any || g.defined();
    if (!any) {  // nothing reached this node (its consumers returned no gradient): pass it by
      if (!retain_graph) n->release();
      for (const Edge& e : n->next_edges)
        if (e.fn && --pending[e.fn.get()].deps == 0) ready.push(e.fn.get());
      continue;
    }
    for (size_t k = 0; k < in.size(); ++k) {
      const Node::OutputMeta& om = n->outputs[k];
      if (!in[k].defined()) in[k] = zeros(om.shape, {.dtype = om.dtype, .device = om.device});
      for (const GradHook& h : n->pre_hooks[k]) {
        Tensor r = h(in[k]);
        if (r.defined()) in[k] = r;
      }
    }
    Grads out = n->apply(in);
    if (!retain_graph) n->release();
    if (!n->next_edges.empty()) {
      CM_CHECK(out.size() == n->next_edges.size(), "backward of ", n->name(), " returned ",
               out.size(), " gradients for ", n->next_edges.size(), " inputs");
    }
    for (size_t i = 0; i < n->next_edges.size(); ++i) {
      const Edge& e = n->next_edges[i];
      if (!e.fn) continue;
      if (out[i].defined()) {
        const Node::OutputMeta& target = e.fn->outputs[e.input_nr];
        CM_CHECK(out[i].shape() == target.shape, "backward of ", n->name(),
                 " returned a gradient of ", "shape ", shape_str(out[i].shape()), " for input ", i,
                 " of shape ", shape_str(target.shape));
        deliver(e.fn.get(), e.input_nr, out[i]);
      }
      if (--pending[e.fn.get()].deps == 0) ready.push(e.fn.get());
    }
  }
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  cm::backward({*this}, {grad}, retain_graph);
}

}  // namespace cm
