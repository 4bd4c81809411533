// Matrix products. matmul follows torch.matmul: a 1-D left operand is a row vector, a 1-D right
// operand a column vector (the added dim is removed from the result), and batch dims broadcast.
// Broadcasting is done with differentiable expand views, so the product itself (bmm) only sees
// operands of one batch shape, and its backward is two products with transposed views:
//   dA = dC · Bᵀ,  dB = Aᵀ · dC.
#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {
// c[..., M, N] = a[..., M, K] · b[..., K, N]; a and b of one rank with equal batch dims.
Tensor bmm(const Tensor& a, const Tensor& b) {
  const int64_t nd = a.dim();
  Shape s = a.shape();
  s[size_t(nd - 1)] = b.shape()[size_t(nd - 1)];
  Tensor c = new_empty(s, a.dtype(), a.device());
  backend_of(a).matmul(a, b, c);
  if (needs_grad({a, b})) {
    const bool na = a.requires_grad(), nb = b.requires_grad();
    SavedTensor sa = nb ? SavedTensor(a, "matmul") : SavedTensor();
    SavedTensor sb = na ? SavedTensor(b, "matmul") : SavedTensor();
    record("matmul", {a, b}, {c}, [=](const Grads& g) {
      return Grads{na ? bmm(g[0], transpose(sb.get(), -1, -2)) : Tensor(),
                   nb ? bmm(transpose(sa.get(), -1, -2), g[0]) : Tensor()};
    });
  }
  return c;
}
}  // namespace

Tensor matmul(const Tensor& a0, const Tensor& b0) {
  CM_CHECK(a0.dim() >= 1 && b0.dim() >= 1,
           "matmul: operands must have at least one dim, got shapes ", shape_str(a0.shape()),
           " and ", shape_str(b0.shape()));
  CM_CHECK(is_floating(a0.dtype()) && is_floating(b0.dtype()),
           "matmul: floating operands required, got ", dtype_name(a0.dtype()), " and ",
           dtype_name(b0.dtype()));
  common_device({a0, b0}, "matmul");
  const DType t = promote_types(a0.dtype(), b0.dtype());
  Tensor a = to(a0, t), b = to(b0, t);
  const bool vec_a = a.dim() == 1, vec_b = b.dim() == 1;
  if (vec_a) a = unsqueeze(a, 0);
  if (vec_b) b = unsqueeze(b, 1);
  const int64_t M = a.size(-2), K = a.size(-1), K2 = b.size(-2), N = b.size(-1);
  CM_CHECK(K == K2, "matmul: inner dims differ: ", shape_str(a0.shape()), " · ",
           shape_str(b0.shape()));
  const Shape ba(a.shape().begin(), a.shape().end() - 2),
      bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  Shape sa = batch, sb = batch;
  sa.insert(sa.end(), {M, K});
  sb.insert(sb.end(), {K, N});
  Tensor c = bmm(expand(a, sa), expand(b, sb));
  if (vec_a) c = squeeze(c, -2);
  if (vec_b) c = squeeze(c, -1);
  return c;
}

}  // namespace cm
