// CPU elementwise kernels: copy (with dtype conversion), fill, unary, binary, where.
// Each kernel is one strided loop (loops.h) whose row body has a unit-stride fast path that the
// compiler vectorises and a general strided path.
#include <cstring>

#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"
#include "tensor/scalar_ops.h"

namespace cm::cpu {
namespace {

// out = f(x) elementwise; TI/TO are storage types, f works on compute_t<TI>.
template <class TI, class TO, class F>
void map1(const LoopPlan& p, F f) {
  using C = compute_t<TI>;
  for_each_row(p, [&](char* const* ptr, const int64_t* s, int64_t n) {
    TO* o = reinterpret_cast<TO*>(ptr[0]);
    const TI* x = reinterpret_cast<const TI*>(ptr[1]);
    if (s[0] == 1 && s[1] == 1) {
      for (int64_t i = 0; i < n; ++i) o[i] = convert<TO>(f(static_cast<C>(x[i])));
    } else {
      for (int64_t i = 0; i < n; ++i) o[i * s[0]] = convert<TO>(f(static_cast<C>(x[i * s[1]])));
    }
  });
}

template <class TI, class TO, class F>
void map2(const LoopPlan& p, F f) {
  using C = compute_t<TI>;
  for_each_row(p, [&](char* const* ptr, const int64_t* s, int64_t n) {
    TO* o = reinterpret_cast<TO*>(ptr[0]);
    const TI* a = reinterpret_cast<const TI*>(ptr[1]);
    const TI* b = reinterpret_cast<const TI*>(ptr[2]);
    if (s[0] == 1 && s[1] == 1 && s[2] == 1) {
      for (int64_t i = 0; i < n; ++i)
        o[i] = convert<TO>(f(static_cast<C>(a[i]), static_cast<C>(b[i])));
    } else if (s[0] == 1 && s[1] == 1 && s[2] == 0) {  // tensor with broadcast scalar row
      const C bv = static_cast<C>(b[0]);
      for (int64_t i = 0; i < n; ++i) o[i] = convert<TO>(f(static_cast<C>(a[i]), bv));
    } else {
      for (int64_t i = 0; i < n; ++i)
        o[i * s[0]] = convert<TO>(f(static_cast<C>(a[i * s[1]]), static_cast<C>(b[i * s[2]])));
    }
  });
}

}  // namespace

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous() &&
      src.shape() == dst.shape()) {
    if (src.data_ptr() == dst.data_ptr()) return;
    const char* s = static_cast<const char*>(src.data_ptr());
    char* d = static_cast<char*>(dst.data_ptr());
    const int64_t nbytes = int64_t(dst.nbytes());
    const int64_t chunk = kGrain * 16;
    parallel_for((nbytes + chunk - 1) / chunk, chunk / 16, [&](int64_t c) {
      int64_t begin = c * chunk;
      std::memcpy(d + begin, s + begin, size_t(std::min(chunk, nbytes - begin)));
    });
    return;
  }
  LoopPlan p = make_plan({&dst, &src});
  CM_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using TO = scalar_t;
    CM_DISPATCH_ALL(src.dtype(), "copy", [&] {
      using TI = scalar_t;
      for_each_row(p, [&](char* const* ptr, const int64_t* s, int64_t n) {
        TO* o = reinterpret_cast<TO*>(ptr[0]);
        const TI* x = reinterpret_cast<const TI*>(ptr[1]);
        if (s[0] == 1 && s[1] == 1) {
          for (int64_t i = 0; i < n; ++i) o[i] = convert<TO>(x[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * s[0]] = convert<TO>(x[i * s[1]]);
        }
      });
    });
  });
}

void CpuBackend::copy_between_devices(const Tensor& src, const Tensor& dst) {
  CM_FAIL("copy_between_devices: the CPU backend copies only within host memory (",
          src.device().str(), " -> ", dst.device().str(), ")");
}

void CpuBackend::fill(const Tensor& dst, double value) {
  LoopPlan p = make_plan({&dst});
  CM_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    const scalar_t v = convert<scalar_t>(value);
    for_each_row(p, [&](char* const* ptr, const int64_t* s, int64_t n) {
      scalar_t* o = reinterpret_cast<scalar_t*>(ptr[0]);
      for (int64_t i = 0; i < n; ++i) o[i * s[0]] = v;
    });
  });
}

namespace {

// Per-dtype switches over the op lists of scalar_ops.h.
#define CM_UNARY_CASE(E, F)                           \
  case UnaryOp::E:                                    \
    map1<T, TO>(p, sop::F<compute_t<T>>{C(a), C(b)}); \
    return true;
#define CM_BINARY_CASE(E, F)                        \
  case BinaryOp::E:                                 \
    map2<T, TO>(p, sop::F<compute_t<T>>{C(alpha)}); \
    return true;

template <class T, class TO = bool>
bool unary_pred(UnaryOp op, const LoopPlan& p, double a, double b) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_PRED_UNARY(CM_UNARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool unary_float(UnaryOp op, const LoopPlan& p, double a, double b) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_FLOAT_UNARY(CM_UNARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool unary_int(UnaryOp op, const LoopPlan& p, double a, double b) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_INT_UNARY(CM_UNARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = bool>
bool binary_pred(BinaryOp op, const LoopPlan& p, double alpha) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_PRED_BINARY(CM_BINARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool binary_float(BinaryOp op, const LoopPlan& p, double alpha) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_FLOAT_BINARY(CM_BINARY_CASE)
    default:
      return false;
  }
}
template <class T, class TO = T>
bool binary_int(BinaryOp op, const LoopPlan& p, double alpha) {
  using C = compute_t<T>;
  switch (op) {
    CM_FOR_EACH_INT_BINARY(CM_BINARY_CASE)
    default:
      return false;
  }
}
#undef CM_UNARY_CASE
#undef CM_BINARY_CASE

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) {
  LoopPlan p = make_plan({&out, &x});
  const char* name = unary_op_name(op);
  bool done = false;
  if (unary_op_is_predicate(op)) {
    CM_DISPATCH_ALL(x.dtype(), name, [&] { done = unary_pred<scalar_t>(op, p, a, b); });
  } else if (is_floating(x.dtype())) {
    CM_DISPATCH_FLOAT(x.dtype(), name, [&] { done = unary_float<scalar_t>(op, p, a, b); });
  } else {
    CM_DISPATCH_NUMERIC(x.dtype(), name, [&] { done = unary_int<scalar_t>(op, p, a, b); });
  }
  CM_CHECK(done, name, ": not defined for dtype ", dtype_name(x.dtype()));
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                        double alpha) {
  LoopPlan p = make_plan({&out, &a, &b});
  const char* name = binary_op_name(op);
  bool done = false;
  if (binary_op_is_predicate(op)) {
    CM_DISPATCH_ALL(a.dtype(), name, [&] { done = binary_pred<scalar_t>(op, p, alpha); });
  } else if (is_floating(a.dtype())) {
    CM_DISPATCH_FLOAT(a.dtype(), name, [&] { done = binary_float<scalar_t>(op, p, alpha); });
  } else {
    CM_DISPATCH_NUMERIC(a.dtype(), name, [&] { done = binary_int<scalar_t>(op, p, alpha); });
  }
  CM_CHECK(done, name, ": not defined for dtype ", dtype_name(a.dtype()));
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  LoopPlan p = make_plan({&out, &cond, &a, &b});
  CM_DISPATCH_ALL(out.dtype(), "where", [&] {
    for_each_row(p, [&](char* const* ptr, const int64_t* s, int64_t n) {
      scalar_t* o = reinterpret_cast<scalar_t*>(ptr[0]);
      const bool* c = reinterpret_cast<const bool*>(ptr[1]);
      const scalar_t* x = reinterpret_cast<const scalar_t*>(ptr[2]);
      const scalar_t* y = reinterpret_cast<const scalar_t*>(ptr[3]);
      for (int64_t i = 0; i < n; ++i) o[i * s[0]] = c[i * s[1]] ? x[i * s[2]] : y[i * s[3]];
    });
  });
}

void CpuBackend::adam_step(const Tensor& param, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                           const Tensor& grad, const AdamStep& s) {
  const int64_t n = param.numel();
  CM_DISPATCH_FLOAT(param.dtype(), "adam_step", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      const sop::AdamCoeffs<scalar_t> k(s);
      scalar_t* p = param.data<scalar_t>();
      scalar_t* m = exp_avg.data<scalar_t>();
      scalar_t* v = exp_avg_sq.data<scalar_t>();
      const scalar_t* g = grad.data<scalar_t>();
      const int64_t blocks = (n + kGrain - 1) / kGrain;
      parallel_for(blocks, kGrain, [&](int64_t b) {
        const int64_t end = std::min(n, (b + 1) * kGrain);
        for (int64_t i = b * kGrain; i < end; ++i) sop::adam_update(p[i], m[i], v[i], g[i], k);
      });
    } else {
      CM_FAIL("adam_step: dtype ", dtype_name(param.dtype()), " (f32 or f64 only)");
    }
  });
}

}  // namespace cm::cpu
