// Builds LoopPlans (tensor/loop_plan.h); shared by all backends.
#include "tensor/loop_plan.h"

namespace cm {

LoopPlan make_plan(std::initializer_list<const Tensor*> operands) {
  LoopPlan p;
  p.nops = int(operands.size());
  CM_CHECK(p.nops >= 1 && p.nops <= kMaxOperands, "make_plan: ", p.nops, " operands");
  const Tensor& out = **operands.begin();
  const Shape& shape = out.shape();
  p.numel = out.numel();
  int k = 0;
  for (const Tensor* t : operands) {
    CM_CHECK(t->shape() == shape, "make_plan: operand ", k, " has shape ", shape_str(t->shape()),
             ", expected ", shape_str(shape));
    p.base[k] = static_cast<char*>(t->data_ptr());
    p.esize[k] = int64_t(t->element_size());
    ++k;
  }
  // Copy the non-trivial dims (size > 1), outermost first.
  int nd = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    p.shape[nd] = shape[d];
    k = 0;
    for (const Tensor* t : operands) p.strides[k++][nd] = t->strides()[d];
    ++nd;
  }
  // Merge dim d into d+1 (its inner neighbour) when every operand is contiguous across them.
  int m = 0;
  for (int d = 0; d < nd; ++d) {
    if (m > 0) {
      bool mergeable = true;
      for (k = 0; k < p.nops; ++k)
        if (p.strides[k][m - 1] != p.strides[k][d] * p.shape[d]) mergeable = false;
      if (mergeable) {
        p.shape[m - 1] *= p.shape[d];
        for (k = 0; k < p.nops; ++k) p.strides[k][m - 1] = p.strides[k][d];
        continue;
      }
    }
    p.shape[m] = p.shape[d];
    for (k = 0; k < p.nops; ++k) p.strides[k][m] = p.strides[k][d];
    ++m;
  }
  p.ndim = m;
  return p;
}

}  // namespace cm
