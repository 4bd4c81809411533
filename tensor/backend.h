// The device interface. Each device implements these kernels; the differentiable ops in
// autograd/ops call them after checking shapes and dtypes and allocating outputs, so a kernel
// may assume what its comment states. The CPU backend is tensor/cpu, the CUDA backend tensor/cuda,
// and a build without CUDA gets tensor/no_cuda, whose every kernel fails with
// "<kernel>: no CUDA backend (cm was built without CUDA)".
//
// Conventions: operands are strided views (any strides, 0-strides for broadcasting), outputs are
// freshly allocated unless stated; all tensors of one call are on the backend's device.
#pragma once

#include <cstdint>
#include <string>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace cm {

enum class UnaryOp : uint8_t {
  // floating point, out dtype == in dtype
  Neg,
  Abs,
  Exp,
  Log,
  Sqrt,
  Rsqrt,
  Square,
  Reciprocal,
  Sin,
  Cos,
  Tanh,
  Sigmoid,
  Silu,
  Relu,
  Gelu,
  Sign,
  Erf,
  Expm1,
  Log1p,
  Floor,
  Ceil,
  Round,
  // with scalar parameters a (and b)
  PowScalar,   // x^a
  RPowScalar,  // a^x
  AddScalar,   // x + a
  MulScalar,   // x * a
  DivScalar,   // x / a (a true division, not x · (1/a))
  RSubScalar,  // a - x
  RDivScalar,  // a / x
  MaxScalar,   // max(x, a)
  MinScalar,   // min(x, a)
  Clamp,       // min(max(x, a), b)
  // comparisons with a scalar; out dtype bool
  EqScalar,
  NeScalar,
  LtScalar,
  LeScalar,
  GtScalar,
  GeScalar,
  IsFinite,    // out dtype bool
  LogicalNot,  // bool -> bool
};
const char* unary_op_name(UnaryOp op);
bool unary_op_is_predicate(UnaryOp op);  // output dtype bool

enum class BinaryOp : uint8_t {
  Add,  // a + alpha·b
  Sub,  // a - alpha·b
  Mul,
  Div,
  Pow,
  Maximum,
  Minimum,
  Lerp,      // a + alpha·(b - a)
  AddScale,  // (a + b)·alpha: the U-Net blocks' residual add and skip scaling in one pass
  // comparisons and logic; out dtype bool
  Eq,
  Ne,
  Lt,
  Le,
  Gt,
  Ge,
  LogicalAnd,
  LogicalOr,
  // gradients of activations: a = incoming gradient, b = saved input (x) or output (y)
  ReluBackward,     // a·(x > 0)
  SiluBackward,     // a·s·(1 + x·(1 − s)), s = sigmoid(x)
  GeluBackward,     // a·(Φ(x) + x·φ(x))
  SigmoidBackward,  // a·y·(1 − y)
  TanhBackward,     // a·(1 − y²)
};
const char* binary_op_name(BinaryOp op);
bool binary_op_is_predicate(BinaryOp op);

enum class ReduceOp : uint8_t { Sum, Mean, Max, Min };
const char* reduce_op_name(ReduceOp op);

// Geometry of a 2-D convolution (cross-correlation, as PyTorch's conv2d).
struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;
};

// One update of Adam (rectified = false) or RAdam (true), the scalars worked out by the caller
// (nn/optim.cpp) in f64 for the parameter's step t. The kernels compute per element, in the
// tensors' dtype, the operations of torch 1.13's single-tensor loops in their order
// (sop::adam_update in scalar_ops.h), so they match the composite of unary/binary ops.
struct AdamStep {
  bool rectified = false;
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  bool decoupled_weight_decay = false;
  double bias_correction1 = 1;  // 1 − β1^t
  double bias_correction2 = 1;  // 1 − β2^t
  double rect = 0;              // RAdam: r when ρt > 5, 0 for the un-adapted first steps
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The allocator of device `device_index` of this backend.
  virtual Allocator& allocator(int device_index) = 0;
  // Waits until all work queued on this backend's devices has finished.
  virtual void synchronize() = 0;

  // ---- memory and elementwise ----
  // dst[i] = src[i] converted to dst's dtype. Same shape (src may be broadcast-expanded); dst may
  // be any view (in-place copy_). Source and destination must not partially overlap.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  // Contiguous, same dtype and size, src and dst on different devices (one of them this one).
  virtual void copy_between_devices(const Tensor& src, const Tensor& dst) = 0;
  // dst[i] = value (dst any view).
  virtual void fill(const Tensor& dst, double value) = 0;
  // out = op(x); x and out of the same shape; out dtype = x's (bool for predicates).
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double a, double b) = 0;
  // out = op(a, b); a, b expanded to out's shape and of one dtype; out dtype = theirs (bool for
  // predicates). `out` may be `a` itself (in-place updates).
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                      double alpha) = 0;
  // out = cond ? a : b; cond bool, a/b/out of one dtype, all expanded to out's shape.
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;

  // ---- reductions ----
  // out has x's rank with size 1 on the reduced dims (keepdim form). Floating sums accumulate in
  // f64 on the CPU and in f32 (f64 for f64) on CUDA; integer sums in i64.
  virtual void reduce(ReduceOp op, const Tensor& x, const Tensor& out) = 0;
  // Max or min along one dim with the index of the first extremum. values/indices in keepdim form,
  // indices i64.
  virtual void arg_reduce(bool is_max, const Tensor& x, int64_t dim, const Tensor& values,
                          const Tensor& indices) = 0;
  // Softmax (or log-softmax) along dim; x, out of one shape and floating dtype.
  virtual void softmax(const Tensor& x, int64_t dim, bool log, const Tensor& out) = 0;
  // grad_in = y·(g − Σ g·y) for softmax, g − exp(y)·Σ g for log-softmax (y = forward output).
  virtual void softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim, bool log,
                                const Tensor& grad_in) = 0;

  // ---- linear algebra ----
  // out[..., M, N] = a[..., M, K] · b[..., K, N]. a and b have out's rank with batch dims expanded
  // to out's; out is contiguous; one floating dtype.
  virtual void matmul(const Tensor& a, const Tensor& b, const Tensor& out) = 0;

  // ---- convolution (NCHW; one floating dtype; outputs contiguous) ----
  // out[N, Co, Ho, Wo] = Σ x[N, g·Ci/G + ci, ·, ·] ⋆ w[Co, Ci/G, kh, kw] (no bias).
  virtual void conv2d(const Tensor& x, const Tensor& w, const Conv2dParams& p,
                      const Tensor& out) = 0;
  // The gradient with respect to x (also the forward of conv_transpose2d): grad_x[N, Ci, H, W].
  virtual void conv2d_backward_input(const Tensor& grad_out, const Tensor& w, const Conv2dParams& p,
                                     const Tensor& grad_x) = 0;
  // The gradient with respect to w: grad_w[Co, Ci/G, kh, kw].
  virtual void conv2d_backward_weight(const Tensor& x, const Tensor& grad_out,
                                      const Conv2dParams& p, const Tensor& grad_w) = 0;
  // The fused neighbours, each tested against the composite of the kernels above (which the
  // defaults run): conv2d with the bias added, out = conv2d(x, w) + b[co]; and the weight gradient
  // with the bias gradient grad_b[co] = Σ_{n, h, w} grad_out, where the backend has one pass for
  // both. b and grad_b are [Co] of out's dtype.
  virtual void conv2d_bias(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
                           const Tensor& out);
  virtual void conv2d_backward_weight_bias(const Tensor& x, const Tensor& grad_out,
                                           const Conv2dParams& p, const Tensor& grad_w,
                                           const Tensor& grad_b);

  // ---- group normalisation (x [N, C, *], statistics in f32, f64 for f64 x) ----
  // out = (x − mean)·rstd·weight[c] + bias[c] per (n, group); mean and rstd [N, G] are outputs of
  // the statistics dtype. weight and bias may be undefined (no affine transform). All operands are
  // contiguous (the op makes them so), except that a backend whose
  // group_norm_takes_channels_last() also takes 4-D x, out, grad_out and grad_x that are all
  // channels-last (is_channels_last); weight, bias and the gradients have x's dtype.
  virtual bool group_norm_takes_channels_last() const { return false; }
  // The memory format in which this backend's convolutions run fastest, for networks whose
  // memory_format is "auto": channels-last where the convolutions take NHWC without conversions.
  virtual MemoryFormat preferred_conv_format() const { return MemoryFormat::Contiguous; }
  // Whether networks whose recompute option is "auto" recompute activations in the backward
  // (nn/network.h): where memory, not arithmetic, bounds what a device trains.
  virtual bool recompute_by_default() const { return false; }
  virtual void group_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                          double eps, const Tensor& out, const Tensor& mean,
                          const Tensor& rstd) = 0;
  // Gradients of group_norm from the saved statistics; grad_x, grad_w and grad_b may each be
  // undefined (not wanted).
  virtual void group_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, int64_t groups,
                                   const Tensor& grad_x, const Tensor& grad_w,
                                   const Tensor& grad_b) = 0;
  // group_norm followed by SiLU, out = silu(h) with h = group_norm(x) rounded to x's dtype, and
  // its gradients; the backward recomputes h from x and the saved statistics instead of storing
  // it (bias is needed for that). Operands as for group_norm. The defaults run the composite
  // (group_norm, then silu; the backward recomputes h with group_norm); the CPU fuses them.
  virtual void group_norm_silu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               int64_t groups, double eps, const Tensor& out, const Tensor& mean,
                               const Tensor& rstd);
  virtual void group_norm_silu_backward(const Tensor& grad_out, const Tensor& x,
                                        const Tensor& weight, const Tensor& bias,
                                        const Tensor& mean, const Tensor& rstd, int64_t groups,
                                        double eps, const Tensor& grad_x, const Tensor& grad_w,
                                        const Tensor& grad_b);
  // The same with a per-sample channel shift added first: out = silu(group_norm(x + shift)),
  // shift [N, C] contiguous and broadcast over the spatial dims (a U-Net block's embedding before
  // its second norm), the sum rounded to x's dtype as the separate add rounds it. The backward
  // also gives grad_shift [N, C] = Σ over the spatial dims of grad_x (f64 sums in index order,
  // rounded once, as the reduction does); grad_x is required when grad_shift is wanted. The
  // defaults run the composite (Add into a temporary, group_norm_silu, a Sum reduction).
  virtual void group_norm_silu_shifted(const Tensor& x, const Tensor& shift, const Tensor& weight,
                                       const Tensor& bias, int64_t groups, double eps,
                                       const Tensor& out, const Tensor& mean, const Tensor& rstd);
  virtual void group_norm_silu_shifted_backward(const Tensor& grad_out, const Tensor& x,
                                                const Tensor& shift, const Tensor& weight,
                                                const Tensor& bias, const Tensor& mean,
                                                const Tensor& rstd, int64_t groups, double eps,
                                                const Tensor& grad_x, const Tensor& grad_shift,
                                                const Tensor& grad_w, const Tensor& grad_b);
  // The output of group_norm (silu false), group_norm_silu (silu true) or group_norm_silu_shifted
  // (shift defined) again, bit for bit, from the same operands and the statistics that forward
  // stored (activation recomputation, autograd/node.h). The default runs the forward again into
  // scratch statistics (every backend's are deterministic: the same inputs give the same bits);
  // a backend may apply the stored ones in one pass.
  virtual void group_norm_recompute(const Tensor& x, const Tensor& shift, const Tensor& weight,
                                    const Tensor& bias, int64_t groups, double eps, bool silu,
                                    const Tensor& mean, const Tensor& rstd, const Tensor& out);

  // ---- fused attention (FlashAttention-2's algorithm: the L×L scores are never stored) ----
  // out = softmax(scale·q·kᵀ)·v per batch index, lse = log Σ_keys exp(scale·q·kᵀ) per query row:
  // q [B, Lq, D], k [B, Lk, D], v [B, Lk, Dv] of one floating dtype with any strides (a batch
  // stride may be 0), all sizes positive; out [B, Lq, Dv] contiguous of q's dtype, lse [B, Lq]
  // contiguous f32 (f64 for f64). The backward takes the forward's out and lse and grad_out of
  // out's shape (any strides), and gives grad_q, grad_k, grad_v (each contiguous of q's dtype,
  // undefined where not wanted). Results differ from the composite (matmul, softmax, matmul) by
  // rounding only: every backend's kernel is deterministic (the same inputs give the same bits).
  // fused_attention_supports says which operands a backend's kernels take (none by default: the
  // op runs the composite); fused_attention_by_default whether networks whose `attention` option
  // is "auto" use them.
  virtual bool fused_attention_supports(DType dtype, int64_t d, int64_t dv) const {
    (void)dtype, (void)d, (void)dv;
    return false;
  }
  virtual bool fused_attention_by_default() const { return false; }
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                         const Tensor& out, const Tensor& lse);
  virtual void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  double scale, const Tensor& grad_q, const Tensor& grad_k,
                                  const Tensor& grad_v);

  // ---- indexing ----
  // out = x.index_select(dim, index): index 1-D i64 (validated by the caller against x.size(dim)).
  virtual void index_select(const Tensor& x, int64_t dim, const Tensor& index,
                            const Tensor& out) = 0;
  // out.index_select(dim, index) += src, in place (duplicates in index accumulate).
  virtual void index_add(const Tensor& out, int64_t dim, const Tensor& index,
                         const Tensor& src) = 0;
  // out[i][j][k] = x[i][index[i][j][k]][k] (dim 1 shown); index i64 of out's shape.
  virtual void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) = 0;
  // out[i][index[i][j][k]][k] += src[i][j][k] (dim 1 shown), in place; index i64 of src's shape.
  virtual void scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                           const Tensor& src) = 0;

  // ---- optimizers ----
  // One AdamStep, in place, on param, exp_avg and exp_avg_sq from grad: four dense (contiguous)
  // tensors of one shape, dtype (f32 or f64) and device, checked by the caller.
  virtual void adam_step(const Tensor& param, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                         const Tensor& grad, const AdamStep& s) = 0;

  // ---- random ----
  // Fills `out` (contiguous or channels-last: dense either way) in memory order from blocks
  // first_block, first_block + 1, ... of `seed` (see random.h).
  virtual void random(RandomKind kind, const Tensor& out, uint64_t seed, uint64_t first_block,
                      double a, double b) = 0;
  // Dropout in one pass: m = Bernoulli(keep)·scale drawn as random(Bernoulli, m, seed,
  // first_block, keep, 0) would draw it (memory order), then out = x·m; m is written to `mask`
  // when it is defined (the backward's factor). x, out and mask share one dense layout. The
  // default is that composite (random, then MulScalar in place, then Mul); a backend's fused
  // kernel gives the same bits.
  virtual void dropout(const Tensor& x, double keep, double scale, uint64_t seed,
                       uint64_t first_block, const Tensor& out, const Tensor& mask);

 protected:
  // grad_shift [N, C] = Σ over the spatial dims of grad_x [N, C, *]: the Sum reduction of the
  // composite group_norm_silu_shifted_backward, for backends that fuse the rest.
  void sum_shift_gradient(const Tensor& grad_x, const Tensor& grad_shift);
};

// The backend of a device; a CUDA device in a build without CUDA fails with a clear message.
Backend& backend_for(Device d);
inline Backend& backend_of(const Tensor& t) {
  return backend_for(t.device());
}

namespace cuda {
bool is_available();  // built with CUDA and a device is present
int device_count();   // 0 when unavailable
// The cudaStream_t that cm queues device `index`'s work on, as an opaque handle (for libraries
// that enqueue on it, such as NCCL in dist/); fails in a build without CUDA.
void* stream_handle(int index);
}  // namespace cuda

// TF32 tensor-core arithmetic for f32 matrix products on the GPU (about 10 mantissa bits per
// product, f32 accumulation). Off by default: f32 matmul is exact f32 unless asked otherwise.
void set_matmul_tf32(bool on);
bool matmul_tf32();

}  // namespace cm
