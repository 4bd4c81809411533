// An Indexer walks every position of a shape except one dim (the indexed one), giving each
// position's element offset in up to three tensors; the index kernels of both backends use it.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "tensor/tensor.h"

namespace cm {

struct Indexer {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t st[3][kMaxDims] = {};
  int64_t numel = 1;

  // Row-major over `s` without dim `skip` (−1: none), with the strides of up to three tensors.
  Indexer(const Shape& s, int64_t skip, std::initializer_list<const Shape*> strides) {
    for (int64_t d = 0; d < int64_t(s.size()); ++d) {
      if (d == skip) continue;
      shape[nd] = s[size_t(d)];
      int k = 0;
      for (const Shape* t : strides) st[k++][nd] = (*t)[size_t(d)];
      numel *= s[size_t(d)];
      ++nd;
    }
  }
  // Offsets (elements) of position i in the three tensors.
  CM_HD void offsets(int64_t i, int64_t* o) const {
    o[0] = o[1] = o[2] = 0;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t q = i % shape[d];
      i /= shape[d];
      for (int k = 0; k < 3; ++k) o[k] += q * st[k][d];
    }
  }
};

}  // namespace cm
