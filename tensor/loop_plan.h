// A LoopPlan describes up to kMaxOperands strided views of one shape (operand 0 is the output) for
// the elementwise kernels of every backend. Size-1 dims are dropped, the others ordered by the
// output's strides (largest first), and dims that are contiguous for every operand are merged, so
// a contiguous tensor is a single dim, operands that share a channels-last (or any permuted) dense
// layout are one dim too, and a transposed one keeps its true structure.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "tensor/tensor.h"

namespace cm {

inline constexpr int kMaxOperands = 4;
struct LoopPlan {
  int ndim = 0;  // after merging; innermost dimension last
  int nops = 0;
  int64_t numel = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxOperands][kMaxDims] = {};  // elements
  char* base[kMaxOperands] = {};                 // address of element 0 of each operand
  int64_t esize[kMaxOperands] = {};              // bytes per element
};

// Builds the plan; all operands must already have the shape of operands[0].
LoopPlan make_plan(std::initializer_list<const Tensor*> operands);

}  // namespace cm
