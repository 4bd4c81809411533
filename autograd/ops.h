// The differentiable operations of cm. Each op's forward and backward sit side by side in one file
// per family under autograd/ops/ (named below); their kernels live under tensor/cpu and
// tensor/cuda. All ops run on any device and accept any strides; binary ops broadcast NumPy-style
// and promote dtypes (bool < u8 < i32 < i64 < f16/bf16 < f32 < f64). Shapes in comments are
// examples.
#pragma once

#include <optional>
#include <vector>

#include "autograd/node.h"
#include "tensor/backend.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace cm {

// ---- views and copies (ops/view.cpp)
// --------------------------------------------------------------- Views share storage with their
// input; gradients flow back through them.
Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1; copies only if it must
Tensor view(const Tensor& x, const Shape& shape);  // like reshape but never copies (fails instead)
Tensor permute(const Tensor& x, const Shape& dims);
Tensor transpose(const Tensor& x, int64_t a, int64_t b);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);  // removes dim
Tensor expand(const Tensor& x, const Shape& shape);          // -1 keeps a size
Tensor broadcast_to(const Tensor& x, const Shape& shape);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x);  // all size-1 dims
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor flatten(const Tensor& x, int64_t start = 0, int64_t end = -1);
Tensor unflatten(const Tensor& x, int64_t dim, const Shape& sizes);
Tensor contiguous(const Tensor& x);  // x itself when already contiguous
Tensor clone(const Tensor& x);       // always a fresh contiguous copy
// x in a memory format (x itself when it already has it): channels_last for 4-D [N, C, H, W]
// (memory [N, H, W, C]); ops allocate their outputs in the format of their inputs
// (autograd/ops/common.h: output_format), so a network converts its input once.
Tensor to_memory_format(const Tensor& x, MemoryFormat format);
Tensor detach(const Tensor& x);  // alias without history
Tensor to(const Tensor& x, DType dtype);
Tensor to(const Tensor& x, Device device);
// Sums g over the broadcast dims so that it has `shape` (the backward of broadcasting).
Tensor sum_to_shape(const Tensor& g, const Shape& shape);

// ---- elementwise unary (ops/unary.cpp)
// --------------------------------------------------------------- Integer inputs of the floating
// functions are promoted to f32.
Tensor neg(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // exact (erf) form
Tensor erf(const Tensor& x);
Tensor expm1(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor pow(double base, const Tensor& x);
Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi);
// Piecewise-constant functions: gradient zero.
Tensor sign(const Tensor& x);
Tensor floor(const Tensor& x);
Tensor ceil(const Tensor& x);
Tensor round(const Tensor& x);
// Predicates (bool results, no gradient).
Tensor isfinite(const Tensor& x);
Tensor logical_not(const Tensor& x);

// ---- elementwise binary (ops/binary.cpp)
// ---------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1);  // a + alpha·b
Tensor sub(const Tensor& a, const Tensor& b, double alpha = 1);  // a − alpha·b
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);  // true division (integers promote to f32)
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);  // gradient split evenly on ties
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor lerp(const Tensor& a, const Tensor& b, double weight);  // a + weight·(b − a)
// (a + b)·scale in one pass (the residual add and skip scaling of EDM's U-Net blocks): in f32 and
// f64 the same bits as mul(add(a, b), scale); 16-bit dtypes keep a + b in f32 before scaling.
Tensor add_scaled(const Tensor& a, const Tensor& b, double scale);
Tensor add(const Tensor& a, double s);
Tensor sub(const Tensor& a, double s);
Tensor rsub(double s, const Tensor& a);  // s − a
Tensor mul(const Tensor& a, double s);
Tensor div(const Tensor& a, double s);
Tensor rdiv(double s, const Tensor& a);  // s / a
Tensor maximum(const Tensor& a, double s);
Tensor minimum(const Tensor& a, double s);
// comparisons and logic (bool, no gradient)
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double s);
Tensor ne(const Tensor& a, double s);
Tensor lt(const Tensor& a, double s);
Tensor le(const Tensor& a, double s);
Tensor gt(const Tensor& a, double s);
Tensor ge(const Tensor& a, double s);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
// cond ? a : b, broadcasting all three; differentiable in a and b.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, double b);
Tensor where(const Tensor& cond, double a, const Tensor& b);

Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double s);
Tensor operator-(const Tensor& a, double s);
Tensor operator*(const Tensor& a, double s);
Tensor operator/(const Tensor& a, double s);
Tensor operator+(double s, const Tensor& a);
Tensor operator-(double s, const Tensor& a);
Tensor operator*(double s, const Tensor& a);
Tensor operator/(double s, const Tensor& a);

// ---- reductions (ops/reduce.cpp)
// ------------------------------------------------------------------------ `dims` empty means all
// dims. Sums of integers and bools are i64.
Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
// Variance with Bessel's correction by default (correction = 1), as torch.var.
Tensor var(const Tensor& x, const Shape& dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor std(const Tensor& x, const Shape& dims = {}, int64_t correction = 1, bool keepdim = false);
// Max / min over dims; the gradient is shared evenly among tied maxima (as torch.amax).
Tensor amax(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
struct ValuesIndices {
  Tensor values;
  Tensor indices;  // i64
};
// Max / min along one dim with the index of the first extremum; the gradient goes to that index.
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim = false);

// ---- softmax (ops/softmax.cpp)
// ----------------------------------------------------------------------------
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// ---- matrix product (ops/linalg.cpp)
// ----------------------------------------------------------------------- torch.matmul semantics:
// 1-D operands are promoted to matrices and the added dim removed; batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);

// ---- joining and splitting (ops/join.cpp)
// ---------------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, int64_t split_size,
                          int64_t dim);  // last piece may be shorter
std::vector<Tensor> split(const Tensor& x, const Shape& sizes, int64_t dim);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim);
enum class PadMode { Constant, Reflect, Replicate };
// pads = {left of last dim, right of last dim, left of the dim before, ...} as
// torch.nn.functional.pad; negative pads crop.
Tensor pad(const Tensor& x, const Shape& pads, PadMode mode = PadMode::Constant, double value = 0);

// ---- indexing (ops/index.cpp)
// ---------------------------------------------------------------------------------- index is i64
// or i32; values out of range are errors that name the op, the value and the size.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// x with src added at index along dim (out of place); differentiable in x and src.
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);

// ---- convolution (ops/conv.cpp)
// -------------------------------------------------------------------------------- x [N, Ci, H, W],
// w [Co, Ci/groups, kh, kw], bias [Co] (optional) -> [N, Co, Ho, Wo], as torch's conv2d.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = {},
              const Conv2dParams& p = {});
// x [N, Ci, H, W], w [Ci, Co/groups, kh, kw] -> [N, Co, Ho, Wo] with
// Ho = (H − 1)·stride − 2·padding + dilation·(kh − 1) + output_padding + 1, as torch's
// conv_transpose2d.
Tensor conv_transpose2d(const Tensor& x, const Tensor& w, const Tensor& bias = {},
                        int64_t stride = 1, int64_t padding = 0, int64_t output_padding = 0,
                        int64_t groups = 1, int64_t dilation = 1);

// ---- normalisation (ops/norm.cpp)
// ------------------------------------------------------------------------------- x [N, C, *]
// normalised over (C/groups channels × *) per sample and group, statistics in f32 (f64 for f64 x);
// weight and bias [C] optional, of x's dtype. As torch's group_norm.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight = {},
                  const Tensor& bias = {}, double eps = 1e-5);
// silu(group_norm(x, ...)) as one fused op (one pass forward; the backward recomputes the
// normalised values from x and the statistics instead of storing them). Same arguments.
// With shift ([N, C], or [N, C, 1, 1] for 4-D x; x's dtype): silu(group_norm(x + shift)) in the
// same op, the sum rounded to x's dtype as add() rounds it (a U-Net block's embedding added before
// its second norm), shift's gradient the spatial sum of x's.
Tensor group_norm_silu(const Tensor& x, int64_t groups, const Tensor& weight = {},
                       const Tensor& bias = {}, double eps = 1e-5, const Tensor& shift = {});

// ---- neural-network functions (ops/nn.cpp)
// ------------------------------------------------------------------- x [..., in] · w[out, in]ᵀ +
// b[out]
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = {});
// rows of weight [V, D] picked by integer indices of any shape -> [..., D]
Tensor embedding(const Tensor& weight, const Tensor& indices);
// Zeroes each element with probability p and scales the rest by 1/(1 − p). The mask is drawn from
// `gen`, so a second call with a generator in the same state (same seed and offset) replays it.
// Identity when !training or p == 0. With mask_out, also hands out the factor it applied (the
// scaled mask, x's shape, dtype, device and memory format; undefined where it applied none).
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen,
               Tensor* mask_out = nullptr);
// x·mask for a mask that dropout(x', p, true, g, &mask) handed out with g in gen's present state:
// the values dropout(x, p, true, gen) would give (the same draw), without drawing again; gen
// advances past the draw all the same. An undefined mask (no dropout applied) gives x.
Tensor dropout_replay(const Tensor& x, const Tensor& mask, Generator& gen);
// x [N, C, H, W] -> [N, C, H·s, W·s], each pixel repeated s×s times.
Tensor upsample_nearest2d(const Tensor& x, int64_t scale);
// x [N, C, H, W] -> [N, C, out_h, out_w], bilinear, as torch's interpolate(mode="bilinear").
Tensor upsample_bilinear2d(const Tensor& x, int64_t out_h, int64_t out_w,
                           bool align_corners = false);
// x [N, C, H, W] averaged over kernel×kernel windows (stride defaults to kernel; floor-mode output
// sizes). With count_include_pad the zero padding counts in the divisor (kernel²), as torch's
// avg_pool2d default; without it each window is divided by the number of its elements inside the
// input (torch's count_include_pad=False, TensorFlow's SAME-padded average pool).
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride = 0, int64_t padding = 0,
                  bool count_include_pad = true);
// x [N, C, H, W] -> the maximum of each kernel×kernel window (stride defaults to kernel; padding
// with −∞, never chosen; floor-mode sizes), as torch's max_pool2d with dilation 1. The gradient
// goes to the window's maximum; tied maxima in one window share it evenly (as amax), where PyTorch
// gives it all to the first.
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride = 0, int64_t padding = 0);
// fn(inputs) with activation recomputation (autograd/ops/checkpoint.cpp): while recomputation is
// on (autograd/node.h) and a gradient is to be recorded, one node named `name` keeps the inputs
// only and its backward runs fn again and backpropagates through it (the same gradients bit for
// bit); otherwise fn(inputs), recorded as usual. fn must be deterministic: the same inputs give
// the same bits (no random draws), and build its result from differentiable ops of its inputs
// (undefined inputs stay undefined).
using CheckpointFn = std::function<Tensor(const std::vector<Tensor>&)>;
Tensor checkpoint(const char* name, const CheckpointFn& fn, const std::vector<Tensor>& inputs);

// ---- attention (ops/attention.cpp)
// softmax(q·kᵀ·scale)·v over the last two dims: q [..., Lq, D], k [..., Lk, D], v [..., Lk, Dv]
// (batch dims broadcast); the softmax is computed in f32 whatever the input dtype. scale defaults
// to 1/√D. Either the composite (matmul, softmax, matmul: the L × L scores stored for the
// backward) or the backend's fused kernel (FlashAttention-2: a block of scores at a time, the
// backward recomputes them), as attention_kernel() says; the two differ by rounding only.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    std::optional<double> scale = std::nullopt);

// Which kernel scaled_dot_product_attention runs, per thread (a network sets it for its forward
// from its `attention` option, nn/network.h). Auto: the backend's fused kernel where it takes the
// operands and Backend::fused_attention_by_default says so (the CPU's; CUDA's not until it has
// been verified on a card), else the composite. Fused: the fused kernel wherever the backend takes
// the operands (dtype, head sizes), else the composite. Composite: always the composite.
enum class AttentionKernel { Auto, Fused, Composite };
AttentionKernel attention_kernel();
void set_attention_kernel(AttentionKernel kernel);

class AttentionKernelGuard {
 public:
  explicit AttentionKernelGuard(AttentionKernel k) : prev_(attention_kernel()) {
    set_attention_kernel(k);
  }
  ~AttentionKernelGuard() { set_attention_kernel(prev_); }
  AttentionKernelGuard(const AttentionKernelGuard&) = delete;
  AttentionKernelGuard& operator=(const AttentionKernelGuard&) = delete;

 private:
  AttentionKernel prev_;
};

// ---- in-place updates (ops/inplace.cpp)
// -------------------------------------------------------------------------- For optimizers and
// EMA: they bump the version counter, and refuse tensors that require grad while grad mode is on
// (run them under NoGradGuard). `other` broadcasts to x.
Tensor& add_(Tensor& x, const Tensor& other, double alpha = 1);
Tensor& add_(Tensor& x, double s);
Tensor& sub_(Tensor& x, const Tensor& other, double alpha = 1);
Tensor& mul_(Tensor& x, const Tensor& other);
Tensor& mul_(Tensor& x, double s);
Tensor& div_(Tensor& x, const Tensor& other);
Tensor& lerp_(Tensor& x, const Tensor& end, double weight);  // x += weight·(end − x)
Tensor& copy_(Tensor& x, const Tensor& src);                 // any dtype and device; src broadcasts
Tensor& zero_(Tensor& x);
Tensor& fill_(Tensor& x, double value);
Tensor& clamp_(Tensor& x, std::optional<double> lo, std::optional<double> hi);
// x += value·a·b and x += value·a/b (Adam's moment updates).
Tensor& addcmul_(Tensor& x, const Tensor& a, const Tensor& b, double value = 1);
Tensor& addcdiv_(Tensor& x, const Tensor& a, const Tensor& b, double value = 1);

// ---- random (ops/random.cpp)
// -------------------------------------------------------------------------------------- Draws from
// `gen` (the default generator when null) and advances it; see tensor/random.h.
Tensor rand(const Shape& shape, TensorOptions opt = {}, Generator* gen = nullptr);   // U[0, 1)
Tensor randn(const Shape& shape, TensorOptions opt = {}, Generator* gen = nullptr);  // N(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& shape,
               TensorOptions opt = {.dtype = DType::i64}, Generator* gen = nullptr);
Tensor rand_like(const Tensor& t, Generator* gen = nullptr);
Tensor randn_like(const Tensor& t, Generator* gen = nullptr);
// 1 with probability p, else 0. Every draw fills its tensor in memory order: with format
// ChannelsLast, value i of the draw lands at memory position i of the [N, H, W, C] storage (as
// PyTorch's bernoulli_ on a channels-last tensor), so a dropout mask matches its activations'
// layout.
Tensor bernoulli(const Shape& shape, double p, TensorOptions opt = {}, Generator* gen = nullptr,
                 MemoryFormat format = MemoryFormat::Contiguous);

// ---- utilities
// ----------------------------------------------------------------------------------------------------
// True when a and b have one shape and |a − b| ≤ atol + rtol·|b| everywhere (NaNs equal if
// equal_nan).
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8,
              bool equal_nan = false);
// The largest |a − b| (f64 on the host).
double max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace cm
