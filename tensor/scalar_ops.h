// The scalar math of the elementwise ops, written once for both backends (CM_HD): the CPU loops
// and the CUDA kernels call the same functors, so the two devices agree by construction up to
// the accuracy of their libm. C is the compute type (float for f16/bf16/f32, double for f64,
// the integer type itself for integers).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "tensor/backend.h"

// The functors and the functions they call are always inlined: the CPU loops call them inside
// large dispatch functions, where GCC would otherwise call the larger ones (exp, sigmoid, silu) out
// of line, and a loop that calls a function per element does not vectorise.
#define CM_SOP_INLINE CM_HD __attribute__((always_inline)) inline

namespace cm::sop {

// e^x for the elementwise ops: std::exp in f64; in f32 (the compute type of f32, f16 and bf16)
// a branch-free polynomial that the compiler vectorises, where a libm call per element cannot be.
// x = n·ln2 + r with n = rint(x/ln2) and |r| ≲ ln2/2 (Cody–Waite: ln2 in two parts, the first
// exact in n·ln2_hi), e^r by a degree-7 polynomial in Horner form (SLEEF's expf coefficients),
// then the scaling by 2^n in two halves so that every factor is a normal float and the result
// (subnormal ones included) is rounded once. Beyond the clamp e^x rounds to 0 or overflows to
// inf; NaN propagates. Error below 0.87 ulp over every float (libm's expf: 0.5), and the same
// arithmetic on both devices.
template <class C>
CM_SOP_INLINE C exp(C x) {
  return std::exp(x);
}
template <>
CM_SOP_INLINE float exp(float x) {
  float xc = x < 89.0f ? x : 89.0f;  // NaN -> 89 (restored below), so n stays an integer
  xc = xc > -104.0f ? xc : -104.0f;
  const float n = std::rint(xc * 1.44269504088896341f);
  float r = std::fma(n, -0.693145751953125f, xc);
  r = std::fma(n, -1.428606765330187045e-06f, r);
  float p = 0.000198527617612853646278381f;
  p = std::fma(p, r, 0.00139304355252534151077271f);
  p = std::fma(p, r, 0.00833336077630519866943359f);
  p = std::fma(p, r, 0.0416664853692054748535156f);
  p = std::fma(p, r, 0.166666671633720397949219f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int32_t ni = int32_t(n), n1 = ni >> 1, n2 = ni - n1;  // n1, n2 in [-75, 64]
  const float y = p * detail::f32_from_bits(uint32_t(n1 + 127) << 23) *
                  detail::f32_from_bits(uint32_t(n2 + 127) << 23);
  return x != x ? x : y;
}

template <class C>
CM_SOP_INLINE C sigmoid(C x) {
  return C(1) / (C(1) + exp(-x));
}

// Unary functors: operator()(x) with parameters a, b held in the functor.
#define CM_UNARY_FUNCTOR(Name, expr)                       \
  template <class C>                                       \
  struct Name {                                            \
    C a, b;                                                \
    CM_SOP_INLINE C operator()(C x) const { return expr; } \
  };

CM_UNARY_FUNCTOR(NegF, -x)
CM_UNARY_FUNCTOR(AbsF, x < C(0) ? -x : x)
CM_UNARY_FUNCTOR(ExpF, exp(x))
CM_UNARY_FUNCTOR(LogF, std::log(x))
CM_UNARY_FUNCTOR(SqrtF, std::sqrt(x))
CM_UNARY_FUNCTOR(RsqrtF, C(1) / std::sqrt(x))
CM_UNARY_FUNCTOR(SquareF, x* x)
CM_UNARY_FUNCTOR(ReciprocalF, C(1) / x)
CM_UNARY_FUNCTOR(SinF, std::sin(x))
CM_UNARY_FUNCTOR(CosF, std::cos(x))
CM_UNARY_FUNCTOR(TanhF, std::tanh(x))
CM_UNARY_FUNCTOR(SigmoidF, sigmoid(x))
CM_UNARY_FUNCTOR(SiluF, x* sigmoid(x))
CM_UNARY_FUNCTOR(ReluF, (x != x || x > C(0)) ? x : C(0))  // NaN propagates, as torch.relu
CM_UNARY_FUNCTOR(GeluF, C(0.5) * x * (C(1) + std::erf(x * C(0.70710678118654752440))))
CM_UNARY_FUNCTOR(SignF, C((x > C(0)) - (x < C(0))))
CM_UNARY_FUNCTOR(ErfF, std::erf(x))
CM_UNARY_FUNCTOR(Expm1F, std::expm1(x))
CM_UNARY_FUNCTOR(Log1pF, std::log1p(x))
CM_UNARY_FUNCTOR(FloorF, std::floor(x))
CM_UNARY_FUNCTOR(CeilF, std::ceil(x))
CM_UNARY_FUNCTOR(RoundF, std::nearbyint(x))  // ties to even, as torch.round
CM_UNARY_FUNCTOR(PowScalarF, std::pow(x, a))
CM_UNARY_FUNCTOR(RPowScalarF, std::pow(a, x))
CM_UNARY_FUNCTOR(AddScalarF, x + a)
CM_UNARY_FUNCTOR(MulScalarF, x* a)
CM_UNARY_FUNCTOR(DivScalarF, x / a)
CM_UNARY_FUNCTOR(RSubScalarF, a - x)
CM_UNARY_FUNCTOR(RDivScalarF, a / x)
// max/min propagate NaN, like torch.maximum / torch.clamp.
CM_UNARY_FUNCTOR(MaxScalarF, (x != x || x > a) ? x : a)
CM_UNARY_FUNCTOR(MinScalarF, (x != x || x < a) ? x : a)
CM_UNARY_FUNCTOR(ClampF, x != x ? x : (x < a ? a : (x > b ? b : x)))
#undef CM_UNARY_FUNCTOR

// Predicates: operator()(x) -> bool.
#define CM_PRED_FUNCTOR(Name, expr)                           \
  template <class C>                                          \
  struct Name {                                               \
    C a, b;                                                   \
    CM_SOP_INLINE bool operator()(C x) const { return expr; } \
  };
CM_PRED_FUNCTOR(EqScalarF, x == a)
CM_PRED_FUNCTOR(NeScalarF, x != a)
CM_PRED_FUNCTOR(LtScalarF, x < a)
CM_PRED_FUNCTOR(LeScalarF, x <= a)
CM_PRED_FUNCTOR(GtScalarF, x > a)
CM_PRED_FUNCTOR(GeScalarF, x >= a)
CM_PRED_FUNCTOR(IsFiniteF, std::isfinite(double(x)))
CM_PRED_FUNCTOR(LogicalNotF, !bool(x))
#undef CM_PRED_FUNCTOR

// Binary functors: operator()(x, y) with parameter alpha.
#define CM_BINARY_FUNCTOR(Name, expr)                           \
  template <class C>                                            \
  struct Name {                                                 \
    C alpha;                                                    \
    CM_SOP_INLINE C operator()(C x, C y) const { return expr; } \
  };
CM_BINARY_FUNCTOR(AddF, x + alpha * y)
CM_BINARY_FUNCTOR(SubF, x - alpha * y)
CM_BINARY_FUNCTOR(MulF, x* y)
CM_BINARY_FUNCTOR(DivF, x / y)
CM_BINARY_FUNCTOR(PowF, C(std::pow(x, y)))
CM_BINARY_FUNCTOR(MaximumF, (x != x || x > y) ? x : y)
CM_BINARY_FUNCTOR(MinimumF, (x != x || x < y) ? x : y)
CM_BINARY_FUNCTOR(LerpF, x + alpha * (y - x))
CM_BINARY_FUNCTOR(AddScaleF, (x + y) * alpha)
CM_BINARY_FUNCTOR(ReluBackwardF, y > C(0) ? x : C(0))
CM_BINARY_FUNCTOR(GeluBackwardF, x*(C(0.5) * (C(1) + std::erf(y * C(0.70710678118654752440))) +
                                    y * C(0.39894228040143267794) * exp(C(-0.5) * y * y)))
CM_BINARY_FUNCTOR(SigmoidBackwardF, x* y*(C(1) - y))
CM_BINARY_FUNCTOR(TanhBackwardF, x*(C(1) - y * y))
#undef CM_BINARY_FUNCTOR

// d silu(y) · x = x·s·(1 + y·(1 − s)) with s = sigmoid(y), evaluated once.
template <class C>
struct SiluBackwardF {
  C alpha;
  CM_SOP_INLINE C operator()(C x, C y) const {
    const C s = sigmoid(y);
    return x * s * (C(1) + y * (C(1) - s));
  }
};

// ---- the optimizers' update, per element ----
// AdamStep's scalars rounded once to the compute type, and the update: the operations of the
// composite (nn/optim.cpp, torch 1.13's _single_tensor_adam / _single_tensor_radam), each rounded
// to C, in their order.
template <class C>
struct AdamCoeffs {
  bool rectified, decoupled, coupled;
  C decay;  // 1 − lr·weight_decay (decoupled)
  C wd;     // weight_decay (coupled into the gradient)
  C beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  C bias_correction1, bias_correction2_sqrt, neg_step_size;  // Adam: −lr/(1 − β1^t)
  C lr, rect, neg_one;
  bool adapted;  // RAdam: rect > 0

  explicit AdamCoeffs(const AdamStep& s)
      : rectified(s.rectified),
        decoupled(s.weight_decay != 0 && s.decoupled_weight_decay),
        coupled(s.weight_decay != 0 && !s.decoupled_weight_decay),
        decay(C(1 - s.lr * s.weight_decay)),
        wd(C(s.weight_decay)),
        beta1(C(s.beta1)),
        one_minus_beta1(C(1 - s.beta1)),
        beta2(C(s.beta2)),
        one_minus_beta2(C(1 - s.beta2)),
        eps(C(s.eps)),
        bias_correction1(C(s.bias_correction1)),
        bias_correction2_sqrt(C(std::sqrt(s.bias_correction2))),
        neg_step_size(C(-(s.lr / s.bias_correction1))),
        lr(C(s.lr)),
        rect(C(s.rect)),
        neg_one(C(-1)),
        adapted(s.rect > 0) {}
};

template <class C>
CM_SOP_INLINE void adam_update(C& p, C& m, C& v, C g, const AdamCoeffs<C>& k) {
  if (k.decoupled) p = p * k.decay;  // mul_(param, 1 − lr·wd)
  if (k.coupled) g = g + k.wd * p;   // add(grad, param, wd)
  m = m * k.beta1;                   // mul_(exp_avg, β1)
  m = m + k.one_minus_beta1 * g;     // add_(exp_avg, g, 1 − β1)
  v = v * k.beta2;                   // mul_(exp_avg_sq, β2)
  const C gg = g * g;                // addcmul_(exp_avg_sq, g, g, 1 − β2)
  v = v + k.one_minus_beta2 * gg;
  if (!k.rectified) {
    C denom = std::sqrt(v) / k.bias_correction2_sqrt;  // div(sqrt(v), √(1 − β2^t))
    denom = denom + k.eps;                             // add_(denom, eps)
    const C q = m / denom;                             // addcdiv_(param, m, denom, −step_size)
    p = p + k.neg_step_size * q;
    return;
  }
  const C mhat = m / k.bias_correction1;  // div(exp_avg, 1 − β1^t)
  C u = mhat * k.lr;                      // mul(m̂, lr)
  if (k.adapted) {
    C d = std::sqrt(v);                       // sqrt(exp_avg_sq)
    d = d + k.eps;                            // add_(·, eps)
    const C a = k.bias_correction2_sqrt / d;  // rdiv(√(1 − β2^t), ·)
    u = u * a;
    u = u * k.rect;
  }
  p = p + k.neg_one * u;  // add_(param, ·, −1)
}

#define CM_BINARY_PRED(Name, expr)                                 \
  template <class C>                                               \
  struct Name {                                                    \
    C alpha;                                                       \
    CM_SOP_INLINE bool operator()(C x, C y) const { return expr; } \
  };
CM_BINARY_PRED(EqF, x == y)
CM_BINARY_PRED(NeF, x != y)
CM_BINARY_PRED(LtF, x < y)
CM_BINARY_PRED(LeF, x <= y)
CM_BINARY_PRED(GtF, x > y)
CM_BINARY_PRED(GeF, x >= y)
CM_BINARY_PRED(LogicalAndF, bool(x) && bool(y))
CM_BINARY_PRED(LogicalOrF, bool(x) || bool(y))
#undef CM_BINARY_PRED

}  // namespace cm::sop

// CM_UNARY_SWITCH(op, F, body): calls body.template operator()<sop::XxxF>() style dispatch. The
// backends use these lists so that adding an op means adding one line here and one functor above.
// clang-format off
#define CM_FOR_EACH_FLOAT_UNARY(X) \
  X(Neg, NegF)                     \
  X(Abs, AbsF)                     \
  X(Exp, ExpF)                     \
  X(Log, LogF)                     \
  X(Sqrt, SqrtF)                   \
  X(Rsqrt, RsqrtF)                 \
  X(Square, SquareF)               \
  X(Reciprocal, ReciprocalF)       \
  X(Sin, SinF)                     \
  X(Cos, CosF)                     \
  X(Tanh, TanhF)                   \
  X(Sigmoid, SigmoidF)             \
  X(Silu, SiluF)                   \
  X(Relu, ReluF)                   \
  X(Gelu, GeluF)                   \
  X(Sign, SignF)                   \
  X(Erf, ErfF)                     \
  X(Expm1, Expm1F)                 \
  X(Log1p, Log1pF)                 \
  X(Floor, FloorF)                 \
  X(Ceil, CeilF)                   \
  X(Round, RoundF)                 \
  X(PowScalar, PowScalarF)         \
  X(RPowScalar, RPowScalarF)       \
  X(AddScalar, AddScalarF)         \
  X(MulScalar, MulScalarF)         \
  X(DivScalar, DivScalarF)         \
  X(RSubScalar, RSubScalarF)       \
  X(RDivScalar, RDivScalarF)       \
  X(MaxScalar, MaxScalarF)         \
  X(MinScalar, MinScalarF)         \
  X(Clamp, ClampF)

// Unary ops that are also defined on integer dtypes (exact integer arithmetic).
#define CM_FOR_EACH_INT_UNARY(X) \
  X(Neg, NegF)                   \
  X(Abs, AbsF)                   \
  X(Square, SquareF)             \
  X(Relu, ReluF)                 \
  X(Sign, SignF)                 \
  X(AddScalar, AddScalarF)       \
  X(MulScalar, MulScalarF)       \
  X(RSubScalar, RSubScalarF)     \
  X(MaxScalar, MaxScalarF)       \
  X(MinScalar, MinScalarF)       \
  X(Clamp, ClampF)

#define CM_FOR_EACH_PRED_UNARY(X) \
  X(EqScalar, EqScalarF)          \
  X(NeScalar, NeScalarF)          \
  X(LtScalar, LtScalarF)          \
  X(LeScalar, LeScalarF)          \
  X(GtScalar, GtScalarF)          \
  X(GeScalar, GeScalarF)          \
  X(IsFinite, IsFiniteF)          \
  X(LogicalNot, LogicalNotF)

#define CM_FOR_EACH_FLOAT_BINARY(X)    \
  X(Add, AddF)                         \
  X(Sub, SubF)                         \
  X(Mul, MulF)                         \
  X(Div, DivF)                         \
  X(Pow, PowF)                         \
  X(Maximum, MaximumF)                 \
  X(Minimum, MinimumF)                 \
  X(Lerp, LerpF)                       \
  X(AddScale, AddScaleF)               \
  X(ReluBackward, ReluBackwardF)       \
  X(SiluBackward, SiluBackwardF)       \
  X(GeluBackward, GeluBackwardF)       \
  X(SigmoidBackward, SigmoidBackwardF) \
  X(TanhBackward, TanhBackwardF)

#define CM_FOR_EACH_INT_BINARY(X) \
  X(Add, AddF)                    \
  X(Sub, SubF)                    \
  X(Mul, MulF)                    \
  X(Maximum, MaximumF)            \
  X(Minimum, MinimumF)

#define CM_FOR_EACH_PRED_BINARY(X) \
  X(Eq, EqF)                       \
  X(Ne, NeF)                       \
  X(Lt, LtF)                       \
  X(Le, LeF)                       \
  X(Gt, GtF)                       \
  X(Ge, GeF)                       \
  X(LogicalAnd, LogicalAndF)       \
  X(LogicalOr, LogicalOrF)
// clang-format on
