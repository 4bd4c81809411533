// Strided loops for the CPU kernels over a LoopPlan (tensor/loop_plan.h). The loop hands the
// kernel "rows": a pointer per operand, the inner stride of each, and a count.
// Work is split in fixed chunks of the linear index, so results never depend on the thread count.
//
// The chunks run on the CPU backend's thread pool (run_items below), as many threads as OpenMP's
// setting allows (omp_get_max_threads: OMP_NUM_THREADS, omp_set_num_threads). Not on OpenMP
// itself: libgomp's threads spin at every barrier, and on a machine whose cores are shared (or
// beside OpenBLAS's own pool) a spinning thread holds the core its partner needs, which made
// small-image training steps 3–15× slower under load. The pool's threads spin only briefly
// before sleeping, and the calling thread never waits for a thread that has not started: items
// are handed out one at a time, so a late or descheduled helper simply finds less to do.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "tensor/loop_plan.h"

namespace cm::cpu {

// Compiles a hot kernel twice, for AVX-512 machines (x86-64-v4) and for the build's baseline
// (x86-64-v3 in release builds), the clone picked once at load time: vector loops run on twice the
// lanes where the machine has them. Used only where the clones give the same bits (every element
// keeps its own arithmetic; sums keep their order), so results do not depend on which one runs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define CM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define CM_CPU_CLONES
#endif

// Elements per parallel chunk: below two chunks a loop runs on one thread.
inline constexpr int64_t kGrain = 32768;

// The number of threads the CPU kernels may use (omp_get_max_threads()).
int max_threads();
// True inside an item run by run_items (nested calls then run serially on the calling thread).
bool in_parallel();

namespace detail {
using ItemFn = void (*)(void* ctx, int64_t item, int thread);
// Runs fn(ctx, i, thread) for i in [0, n) on up to `threads` threads of the pool, the caller
// being thread 0; rethrows the first exception an item threw.
void run_pool(int64_t n, int threads, void* ctx, ItemFn fn);
}  // namespace detail

// Runs f(item, thread) for every item in [0, n), on up to max_threads() threads when `parallel`
// (thread < max_threads(), for per-thread scratch), else in order on the calling thread. Items
// are handed out one at a time, in increasing order, to whichever thread asks next.
template <class F>
void run_items(int64_t n, bool parallel, F&& f) {
  if (n <= 0) return;
  const int threads = parallel && n >= 2 && !in_parallel() ? max_threads() : 1;
  if (threads < 2) {
    for (int64_t i = 0; i < n; ++i) f(i, 0);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  detail::run_pool(n, int(std::min<int64_t>(threads, n)),
                   const_cast<void*>(static_cast<const void*>(&f)),
                   [](void* ctx, int64_t i, int thread) { (*static_cast<Fn*>(ctx))(i, thread); });
}

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
  if (nchunks < 2) {
    run_range(0, p.numel);
    return;
  }
  run_items(nchunks, true,
            [&](int64_t c, int) { run_range(c * kGrain, std::min(p.numel, (c + 1) * kGrain)); });
}

// Runs f(i) for i in [0, n) over the threads when n·cost is large enough, in blocks of
// consecutive i (about kGrain cost each, at most 16 per thread).
template <class F>
void parallel_for(int64_t n, int64_t cost_per_item, F&& f) {
  if (n <= 0) return;
  if (n * cost_per_item < 2 * kGrain || n < 2 || in_parallel()) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  const int64_t by_cost = n * std::max<int64_t>(cost_per_item, 1) / kGrain;
  const int64_t blocks = std::clamp<int64_t>(by_cost, 1, std::min<int64_t>(n, 16 * max_threads()));
  run_items(blocks, true, [&](int64_t b, int) {
    for (int64_t i = b * n / blocks, end = (b + 1) * n / blocks; i < end; ++i) f(i);
  });
}

}  // namespace cm::cpu
