// Scaled dot-product attention, softmax(scale·q·kᵀ)·v, two ways with one result up to rounding:
// - the composite of differentiable ops (matmul, softmax in f32, matmul), whose gradient comes
//   from theirs; a checkpoint (ops/checkpoint.cpp) under activation recomputation;
// - the backend's fused kernel (Backend::attention: FlashAttention-2's algorithm), one node with a
//   hand-written backward (Backend::attention_backward) that keeps q, k, v, the output and the
//   per-row log-sum-exp of the scores. The composite stores the L × L scores and weights per head
//   (twice for f16/bf16) between its ops; the fused kernel never has more than a block of them.
// Which one runs: attention_kernel() (ops.h), which a network sets from its `attention` option.
#include <cmath>

#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

thread_local AttentionKernel t_attention_kernel = AttentionKernel::Auto;

// softmax((q·s)·kᵀ)·v from the differentiable ops.
Tensor attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, double s) {
  Tensor scores = matmul(mul(q, s), transpose(k, -2, -1));
  const bool low = q.dtype() == DType::f16 || q.dtype() == DType::bf16;
  Tensor attn = softmax(low ? to(scores, DType::f32) : scores, -1);
  return matmul(low ? to(attn, q.dtype()) : attn, v);
}

bool use_fused(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (t_attention_kernel == AttentionKernel::Composite) return false;
  // empty operands (no keys: zero outputs; no head dims: uniform weights) stay on the composite
  for (const Tensor* t : {&q, &k, &v})
    if (t->numel() == 0) return false;
  const Backend& be = backend_of(q);
  if (!be.fused_attention_supports(q.dtype(), q.size(-1), v.size(-1))) return false;
  return t_attention_kernel == AttentionKernel::Fused || be.fused_attention_by_default();
}

Shape batch_dims(const Tensor& t) {
  return Shape(t.shape().begin(), t.shape().end() - 2);
}

Tensor attention_fused(const Tensor& q, const Tensor& k, const Tensor& v, double s) {
  const char* op = "scaled_dot_product_attention";
  // the batch dims broadcast, then flattened to one: views, except where broadcast dims do not
  // merge (a copy then, through the differentiable ops, which sum the gradients back)
  const Shape batch =
      broadcast_shapes(broadcast_shapes(batch_dims(q), batch_dims(k), op), batch_dims(v), op);
  int64_t B = 1;
  for (int64_t n : batch) B *= n;
  const auto flat = [&](const Tensor& t) {
    Shape full = batch;
    full.push_back(t.size(-2));
    full.push_back(t.size(-1));
    return reshape(expand(t, full), {B, t.size(-2), t.size(-1)});
  };
  const Tensor q3 = flat(q), k3 = flat(k), v3 = flat(v);
  const int64_t Lq = q.size(-2), Dv = v.size(-1);
  const Device dev = q.device();
  Tensor out = new_empty({B, Lq, Dv}, q.dtype(), dev);
  const Tensor lse = new_empty({B, Lq}, q.dtype() == DType::f64 ? DType::f64 : DType::f32, dev);
  const Tensor qd = detach(q3), kd = detach(k3), vd = detach(v3);
  backend_of(q).attention(qd, kd, vd, s, out, lse);
  if (needs_grad({q3, k3, v3})) {
    const bool gq = q3.requires_grad(), gk = k3.requires_grad(), gv = v3.requires_grad();
    const SavedTensor sq(qd, op), sk(kd, op), sv(vd, op), so(out, op), slse(lse, op);
    record(op, {q3, k3, v3}, {out}, [=](const Grads& g) {
      const Tensor qv = sq.get(), kv = sk.get(), vv = sv.get();
      const TensorOptions opt{.dtype = qv.dtype(), .device = qv.device()};
      const Tensor dq = gq ? empty(qv.shape(), opt) : Tensor();
      const Tensor dk = gk ? empty(kv.shape(), opt) : Tensor();
      const Tensor dv = gv ? empty(vv.shape(), opt) : Tensor();
      backend_of(qv).attention_backward(g[0], qv, kv, vv, so.get(), slse.get(), s, dq, dk, dv);
      return Grads{dq, dk, dv};
    });
  }
  Shape out_shape = batch;
  out_shape.push_back(Lq);
  out_shape.push_back(Dv);
  return reshape(out, out_shape);
}

}  // namespace

AttentionKernel attention_kernel() {
  return t_attention_kernel;
}
void set_attention_kernel(AttentionKernel kernel) {
  t_attention_kernel = kernel;
}

// q [..., Lq, D], k [..., Lk, D], v [..., Lk, Dv] -> [..., Lq, Dv] (batch dims broadcast).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    std::optional<double> scale) {
  const char* op = "scaled_dot_product_attention";
  CM_CHECK(q.dim() >= 2 && k.dim() >= 2 && v.dim() >= 2, op,
           ": q, k, v must be [..., L, D], got shapes ", shape_str(q.shape()), ", ",
           shape_str(k.shape()), ", ", shape_str(v.shape()));
  CM_CHECK(is_floating(q.dtype()), op, ": q must be floating, got ", dtype_name(q.dtype()));
  CM_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op,
           ": q, k, v must share a dtype, got ", dtype_name(q.dtype()), ", ", dtype_name(k.dtype()),
           ", ", dtype_name(v.dtype()));
  CM_CHECK(q.size(-1) == k.size(-1) && k.size(-2) == v.size(-2), op, ": shapes do not match: q ",
           shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ", shape_str(v.shape()),
           " (need q [..., Lq, D], k [..., Lk, D], v [..., Lk, Dv])");
  common_device({q, k, v}, op);
  const double s = scale.value_or(1.0 / std::sqrt(double(q.size(-1))));
  if (use_fused(q, k, v)) return attention_fused(q, k, v, s);
  return checkpoint(
      op, [s](const std::vector<Tensor>& x) { return attention_composite(x[0], x[1], x[2], s); },
      {q, k, v});
}

}  // namespace cm
