// CPU reductions: sum/mean/prod/amax/amin over any set of dims, max/min with indices along one
// dim, and softmax / log-softmax with their backward. Floating reductions accumulate in f64.
// The order of accumulation is fixed (sequential per output, or fixed-size chunks combined in
// order), so results do not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"

namespace cm::cpu {
namespace {

// A set of dims walked by multi-index: shape and, per walked tensor, strides (elements).
struct Walk {
  int nd = 0;
  int64_t shape[kMaxDims] = {};
  int64_t s0[kMaxDims] = {};  // first tensor's strides
  int64_t s1[kMaxDims] = {};  // second tensor's strides
  int64_t numel = 1;

  void add(int64_t size, int64_t st0, int64_t st1) {
    if (size == 1) return;
    // merge with the previous (outer) dim when contiguous for both
    if (nd > 0 && s0[nd - 1] == st0 * size && s1[nd - 1] == st1 * size) {
      shape[nd - 1] *= size;
      s0[nd - 1] = st0;
      s1[nd - 1] = st1;
    } else {
      shape[nd] = size;
      s0[nd] = st0;
      s1[nd] = st1;
      ++nd;
    }
    numel *= size;
  }
  // Offsets (elements) of linear index i in both tensors.
  void offsets(int64_t i, int64_t* o0, int64_t* o1) const {
    int64_t a = 0, b = 0;
    for (int d = nd - 1; d >= 0; --d) {
      int64_t q = i % shape[d];
      i /= shape[d];
      a += q * s0[d];
      b += q * s1[d];
    }
    *o0 = a;
    *o1 = b;
  }
};

// Calls row(offset, n, stride) for the linear range [begin, end) of a single-tensor walk (s0).
template <class Row>
void walk_rows(const Walk& w, int64_t begin, int64_t end, Row&& row) {
  if (begin >= end) return;  // also an empty reduced dim, whose size must not be divided by
  if (w.nd == 0) {
    row(int64_t(0), int64_t(1), int64_t(0));
    return;
  }
  const int nd = w.nd;
  int64_t idx[kMaxDims];
  int64_t rem = begin, off = 0;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = rem % w.shape[d];
    rem /= w.shape[d];
    off += idx[d] * w.s0[d];
  }
  int64_t pos = begin;
  while (pos < end) {
    int64_t n = std::min(end - pos, w.shape[nd - 1] - idx[nd - 1]);
    row(off, n, w.s0[nd - 1]);
    pos += n;
    if (pos >= end) break;
    off += n * w.s0[nd - 1];
    idx[nd - 1] += n;
    for (int d = nd - 1; d > 0 && idx[d] == w.shape[d]; --d) {
      idx[d] = 0;
      idx[d - 1] += 1;
      off += w.s0[d - 1] - w.shape[d] * w.s0[d];
    }
  }
}

template <class T>
using acc_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;

template <class T>
void reduce_typed(ReduceOp op, const Tensor& x, const Tensor& out) {
  using A = acc_t<T>;
  Walk kept, red;  // kept: (x strides, out strides); reduced: (x strides, unused)
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (out.shape()[d] == x.shape()[d])
      kept.add(x.shape()[d], x.strides()[d], out.strides()[d]);
    else
      red.add(x.shape()[d], x.strides()[d], 0);
  }
  const T* xp = static_cast<const T*>(x.data_ptr());
  T* op_ = static_cast<T*>(out.data_ptr());
  const int64_t n_red = red.numel;

  A init{};
  if (op == ReduceOp::Max) init = std::numeric_limits<A>::lowest();
  if (op == ReduceOp::Min) init = std::numeric_limits<A>::max();
  if constexpr (std::is_floating_point_v<A>) {
    if (op == ReduceOp::Max) init = -std::numeric_limits<A>::infinity();
    if (op == ReduceOp::Min) init = std::numeric_limits<A>::infinity();
  }
  auto combine = [op](A acc, A v) -> A {
    switch (op) {
      case ReduceOp::Sum:
      case ReduceOp::Mean:
        return acc + v;
      case ReduceOp::Max:
        return (v != v || v > acc) ? v : acc;  // NaN propagates
      case ReduceOp::Min:
        return (v != v || v < acc) ? v : acc;
    }
    return acc;
  };
  // Reduces [begin, end) of the reduced space starting at x offset xbase.
  auto reduce_range = [&](int64_t xbase, int64_t begin, int64_t end) {
    A acc = init;
    walk_rows(red, begin, end, [&](int64_t off, int64_t n, int64_t st) {
      const T* p = xp + xbase + off;
      if (st == 1 && (op == ReduceOp::Sum || op == ReduceOp::Mean)) {
        A s = 0;
        for (int64_t i = 0; i < n; ++i) s += A(static_cast<compute_t<T>>(p[i]));
        acc += s;
      } else {
        for (int64_t i = 0; i < n; ++i) acc = combine(acc, A(static_cast<compute_t<T>>(p[i * st])));
      }
    });
    return acc;
  };
  auto finish = [&](A acc) -> T {
    if (op == ReduceOp::Mean) return convert<T>(double(acc) / double(n_red));
    return convert<T>(acc);
  };

  const int64_t n_out = kept.numel;
  // Many outputs, or short reductions: each output is reduced whole by one thread.
  const bool whole_outputs = n_out >= 16 || n_red < 2 * kGrain;
  // Column reduction: the innermost kept dim is dense in x and the reduced dims are strided (a
  // channels-last bias or FiLM gradient, summed over N, H, W). Each reduced row is then read once
  // for a block of adjacent outputs instead of once per output. Every output still accumulates its
  // values one by one in the order of the reduced index, as the per-output path below does, so the
  // results are the same bits.
  const int64_t cols = kept.nd > 0 && kept.s0[kept.nd - 1] == 1 ? kept.shape[kept.nd - 1] : 0;
  if (whole_outputs && cols >= 8 && red.nd > 0 && red.s0[red.nd - 1] != 1) {
    constexpr int64_t kMaxBlock = 512;
    const int64_t outer = n_out / cols;
    const int64_t per_thread = (n_out + max_threads() - 1) / max_threads();
    const int64_t block = std::clamp<int64_t>(per_thread, 16, kMaxBlock);
    const int64_t nblocks = (cols + block - 1) / block;
    const int64_t ostride = kept.s1[kept.nd - 1];
    parallel_for(outer * nblocks, n_red * std::min(block, cols), [&](int64_t item) {
      const int64_t k0 = (item % nblocks) * block, nk = std::min(block, cols - k0);
      int64_t xo, oo;
      kept.offsets((item / nblocks) * cols + k0, &xo, &oo);
      A acc[kMaxBlock];
      std::fill(acc, acc + nk, init);
      walk_rows(red, 0, n_red, [&](int64_t off, int64_t n, int64_t st) {
        for (int64_t i = 0; i < n; ++i) {
          const T* p = xp + xo + off + i * st;
          if (op == ReduceOp::Sum || op == ReduceOp::Mean) {
            for (int64_t k = 0; k < nk; ++k) acc[k] += A(static_cast<compute_t<T>>(p[k]));
          } else {
            for (int64_t k = 0; k < nk; ++k)
              acc[k] = combine(acc[k], A(static_cast<compute_t<T>>(p[k])));
          }
        }
      });
      for (int64_t k = 0; k < nk; ++k) op_[oo + k * ostride] = finish(acc[k]);
    });
    return;
  }
  if (whole_outputs) {
    parallel_for(n_out, n_red, [&](int64_t o) {
      int64_t xo, oo;
      kept.offsets(o, &xo, &oo);
      op_[oo] = finish(reduce_range(xo, 0, n_red));
    });
    return;
  }
  // Few outputs, long reductions: fixed chunks of the reduced range, combined in order.
  const int64_t nchunks = (n_red + kGrain - 1) / kGrain;
  std::vector<A> partial(static_cast<size_t>(nchunks));
  for (int64_t o = 0; o < n_out; ++o) {
    int64_t xo, oo;
    kept.offsets(o, &xo, &oo);
    parallel_for(nchunks, kGrain, [&](int64_t c) {
      partial[size_t(c)] = reduce_range(xo, c * kGrain, std::min(n_red, (c + 1) * kGrain));
    });
    A acc = init;
    for (int64_t c = 0; c < nchunks; ++c) acc = combine(acc, partial[size_t(c)]);
    op_[oo] = finish(acc);
  }
}

// The positions of all dims but `dim`, walked for two tensors (x and out); the returned stride pair
// is each tensor's stride along `dim`.
Walk walk_except(const Tensor& a, const Tensor& b, int64_t dim) {
  Walk w;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (d != dim) w.add(a.shape()[d], a.strides()[d], b.strides()[d]);
  return w;
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const Tensor& x, const Tensor& out) {
  CM_DISPATCH_NUMERIC(x.dtype(), reduce_op_name(op), [&] { reduce_typed<scalar_t>(op, x, out); });
}

void CpuBackend::arg_reduce(bool is_max, const Tensor& x, int64_t dim, const Tensor& values,
                            const Tensor& indices) {
  Walk w = walk_except(x, values, dim);
  Walk wi = walk_except(x, indices, dim);
  const int64_t n = x.shape()[dim], xs = x.strides()[dim];
  CM_DISPATCH_NUMERIC(x.dtype(), is_max ? "max" : "min", [&] {
    using C = compute_t<scalar_t>;
    const scalar_t* xp = static_cast<const scalar_t*>(x.data_ptr());
    scalar_t* vp = static_cast<scalar_t*>(values.data_ptr());
    int64_t* ip = static_cast<int64_t*>(indices.data_ptr());
    parallel_for(w.numel, n, [&](int64_t o) {
      int64_t xo, vo, xo2, io;
      w.offsets(o, &xo, &vo);
      wi.offsets(o, &xo2, &io);
      C best = static_cast<C>(xp[xo]);
      int64_t bi = 0;
      for (int64_t k = 1; k < n && best == best; ++k) {  // stops at the first NaN
        C v = static_cast<C>(xp[xo + k * xs]);
        if (v != v || (is_max ? v > best : v < best)) {
          best = v;
          bi = k;
        }
      }
      vp[vo] = convert<scalar_t>(best);
      ip[io] = bi;
    });
  });
}

void CpuBackend::softmax(const Tensor& x, int64_t dim, bool log, const Tensor& out) {
  Walk w = walk_except(x, out, dim);
  const int64_t n = x.shape()[dim], xs = x.strides()[dim], os = out.strides()[dim];
  CM_DISPATCH_FLOAT(x.dtype(), log ? "log_softmax" : "softmax", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(x.data_ptr());
    scalar_t* op = static_cast<scalar_t*>(out.data_ptr());
    parallel_for(w.numel, 4 * n, [&](int64_t o) {
      int64_t xo, oo;
      w.offsets(o, &xo, &oo);
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < n; ++k) m = std::max(m, double(xp[xo + k * xs]));
      if (std::isinf(m)) m = 0;  // all -inf (or +inf present): keep the arithmetic well defined
      double s = 0;
      for (int64_t k = 0; k < n; ++k) s += std::exp(double(xp[xo + k * xs]) - m);
      if (log) {
        // (x − m) − log s, as PyTorch: the rounding error then scales with the result, not with m
        const double ls = std::log(s);
        for (int64_t k = 0; k < n; ++k)
          op[oo + k * os] = convert<scalar_t>((double(xp[xo + k * xs]) - m) - ls);
      } else {
        const double inv = 1.0 / s;
        for (int64_t k = 0; k < n; ++k)
          op[oo + k * os] = convert<scalar_t>(std::exp(double(xp[xo + k * xs]) - m) * inv);
      }
    });
  });
}

void CpuBackend::softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim, bool log,
                                  const Tensor& grad_in) {
  Walk wg = walk_except(grad, y, dim);
  Walk wo = walk_except(grad, grad_in, dim);
  const int64_t n = y.shape()[dim];
  const int64_t gs = grad.strides()[dim], ys = y.strides()[dim], os = grad_in.strides()[dim];
  CM_DISPATCH_FLOAT(y.dtype(), "softmax_backward", [&] {
    const scalar_t* gp = static_cast<const scalar_t*>(grad.data_ptr());
    const scalar_t* yp = static_cast<const scalar_t*>(y.data_ptr());
    scalar_t* op = static_cast<scalar_t*>(grad_in.data_ptr());
    parallel_for(wg.numel, 4 * n, [&](int64_t o) {
      int64_t go, yo, go2, oo;
      wg.offsets(o, &go, &yo);
      wo.offsets(o, &go2, &oo);
      double s = 0;
      if (log) {
        for (int64_t k = 0; k < n; ++k) s += double(gp[go + k * gs]);
        for (int64_t k = 0; k < n; ++k)
          op[oo + k * os] =
              convert<scalar_t>(double(gp[go + k * gs]) - std::exp(double(yp[yo + k * ys])) * s);
      } else {
        for (int64_t k = 0; k < n; ++k) s += double(gp[go + k * gs]) * double(yp[yo + k * ys]);
        for (int64_t k = 0; k < n; ++k)
          op[oo + k * os] =
              convert<scalar_t>(double(yp[yo + k * ys]) * (double(gp[go + k * gs]) - s));
      }
    });
  });
}

}  // namespace cm::cpu
