// Builds LoopPlans (tensor/loop_plan.h); shared by all backends.
#include "tensor/loop_plan.h"

#include <utility>

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
  // Order the dims by the output's strides, largest first (stable), so that operands sharing one
  // memory order (channels-last, or any permutation) are walked in memory order and merge into one
  // dense run below. Elementwise results do not depend on the order of the walk.
  for (int d = 1; d < nd; ++d)
    for (int e = d; e > 0 && p.strides[0][e - 1] < p.strides[0][e]; --e) {
      std::swap(p.shape[e - 1], p.shape[e]);
      for (k = 0; k < p.nops; ++k) std::swap(p.strides[k][e - 1], p.strides[k][e]);
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
