// Strided loops for the CPU kernels over a LoopPlan (tensor/loop_plan.h). The loop hands the
// kernel "rows": a pointer per operand, the inner stride of each, and a count.
// Work is split over OpenMP threads in fixed chunks of the linear index, so results never depend
// on the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>

#include "tensor/loop_plan.h"

namespace cm::cpu {

// Elements per parallel chunk: below two chunks a loop runs on one thread.
inline constexpr int64_t kGrain = 32768;

using cm::kMaxOperands;
using cm::LoopPlan;
using cm::make_plan;

// Calls row(ptrs, inner_strides, n) over the whole index space; ptrs[k] points at the first element
// of the row in operand k (as char*), inner_strides[k] is in elements.
template <class Row>
void for_each_row(const LoopPlan& p, Row&& row) {
  if (p.numel == 0) return;
  const int nd = p.ndim;
  const int64_t inner = nd > 0 ? p.shape[nd - 1] : 1;
  int64_t inner_strides[kMaxOperands];
  for (int k = 0; k < p.nops; ++k) inner_strides[k] = nd > 0 ? p.strides[k][nd - 1] : 0;

  auto run_range = [&](int64_t begin, int64_t end) {
    // multi-index of `begin`
    int64_t idx[kMaxDims];
    int64_t rem = begin;
    for (int d = nd - 1; d >= 0; --d) {
      idx[d] = rem % p.shape[d];
      rem /= p.shape[d];
    }
    char* ptr[kMaxOperands];
    for (int k = 0; k < p.nops; ++k) {
      int64_t off = 0;
      for (int d = 0; d < nd; ++d) off += idx[d] * p.strides[k][d];
      ptr[k] = p.base[k] + off * p.esize[k];
    }
    int64_t pos = begin;
    while (pos < end) {
      int64_t n = std::min(end - pos, nd > 0 ? inner - idx[nd - 1] : int64_t(1));
      row(ptr, inner_strides, n);
      pos += n;
      if (pos >= end) break;
      // advance the multi-index by n (n reaches the end of the inner dim here)
      for (int k = 0; k < p.nops; ++k) ptr[k] += n * inner_strides[k] * p.esize[k];
      idx[nd - 1] += n;
      for (int d = nd - 1; d > 0 && idx[d] == p.shape[d]; --d) {
        idx[d] = 0;
        idx[d - 1] += 1;
        for (int k = 0; k < p.nops; ++k)
          ptr[k] += (p.strides[k][d - 1] - p.shape[d] * p.strides[k][d]) * p.esize[k];
      }
    }
  };

  const int64_t nchunks = (p.numel + kGrain - 1) / kGrain;
  if (nchunks < 2 || omp_in_parallel()) {
    run_range(0, p.numel);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) run_range(c * kGrain, std::min(p.numel, (c + 1) * kGrain));
}

// Runs f(i) for i in [0, n) over OpenMP threads when n·cost is large enough.
template <class F>
void parallel_for(int64_t n, int64_t cost_per_item, F&& f) {
  if (n <= 0) return;
  if (n * cost_per_item < 2 * kGrain || n < 2 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

}  // namespace cm::cpu
