// Convolutions: conv2d and conv_transpose2d (NCHW, PyTorch semantics), forward and backward side by
// side. Both run on the three Backend kernels (tensor/cpu/conv.cpp, tensor/cuda/conv.cpp):
//
//                      forward                    dx                         dw
//   conv2d             conv(x, w)                 conv_bwd_input(g, w)       conv_bwd_weight(x, g)
//   conv_transpose2d   conv_bwd_input(x, w)       conv(g, w)                 conv_bwd_weight(g, x)
//
// conv_transpose2d is the adjoint of conv2d in its input, so the roles swap: its input plays the
// part of conv2d's output gradient and its output that of conv2d's input. The bias gradient is the
// output gradient summed over N, H and W.
#include <sstream>

#include "autograd/ops/common.h"

namespace cm {
using namespace opdetail;

namespace {

// The output size of a convolution along one dim; 0 where the (padded) input is smaller than the
// dilated kernel.
int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

std::string params_str(const Conv2dParams& p) {
  std::ostringstream os;
  os << "stride (" << p.stride_h << ", " << p.stride_w << "), padding (" << p.pad_h << ", "
     << p.pad_w << "), dilation (" << p.dil_h << ", " << p.dil_w << "), groups " << p.groups;
  return os.str();
}

void check_params(const Conv2dParams& p, const char* op) {
  CM_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dil_h >= 1 && p.dil_w >= 1 && p.pad_h >= 0 &&
               p.pad_w >= 0 && p.groups >= 1,
           op, ": stride, dilation and groups must be positive and padding non-negative, got ",
           params_str(p));
}

struct Operands {
  Tensor x, w, b;
};

// Checks that the operands are floating and on one device, and promotes them to a common dtype.
Operands promote(const Tensor& x, const Tensor& w, const Tensor& b, const char* op) {
  CM_CHECK(
      is_floating(x.dtype()) && is_floating(w.dtype()) && (!b.defined() || is_floating(b.dtype())),
      op, ": floating operands required, got x ", dtype_name(x.dtype()), ", w ",
      dtype_name(w.dtype()),
      b.defined() ? std::string(", bias ") + dtype_name(b.dtype()) : std::string());
  common_device({x, w, b}, op);
  DType t = promote_types(x.dtype(), w.dtype());
  if (b.defined()) t = promote_types(t, b.dtype());
  return {to(x, t), to(w, t), b.defined() ? to(b, t) : Tensor()};
}

void check_bias(const Tensor& b, int64_t channels, const char* op) {
  CM_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == channels), op, ": bias must be [",
           channels, "], got ", shape_str(b.shape()));
}

// ---- history-free kernels
// --------------------------------------------------------------------------

// A fresh y [N, Co, Ho, Wo] for conv(x, w), in `format` (default x's: a channels-last network
// stays channels-last).
Tensor conv_output(const Tensor& x, const Tensor& w, int64_t Ho, int64_t Wo,
                   std::optional<MemoryFormat> format = std::nullopt) {
  return empty({x.size(0), w.size(0), Ho, Wo}, {.dtype = x.dtype(), .device = x.device()},
               format.value_or(memory_format_of(x)));
}
// y [N, Co, Ho, Wo] = conv(x [N, C, H, W], w [Co, C/G, kh, kw]), in `format`.
Tensor conv_raw(const Tensor& x, const Tensor& w, const Conv2dParams& p, int64_t Ho, int64_t Wo,
                MemoryFormat format) {
  Tensor y = conv_output(x, w, Ho, Wo, format);
  backend_of(x).conv2d(x, w, p, y);
  return y;
}
Tensor conv_raw(const Tensor& x, const Tensor& w, const Conv2dParams& p, int64_t Ho, int64_t Wo) {
  return conv_raw(x, w, p, Ho, Wo, memory_format_of(x));
}
// dx [x_shape] from dy [N, Co, Ho, Wo] and w, in `format`: the backward passes give the forward
// input's format, so a gradient that reaches a convolution in another layout (the network's
// contiguous output, a 1-channel image) does not carry that layout on through the network.
Tensor conv_input_grad_raw(const Tensor& dy, const Tensor& w, const Conv2dParams& p,
                           const Shape& x_shape, MemoryFormat format) {
  Tensor dx = empty(x_shape, {.dtype = dy.dtype(), .device = dy.device()}, format);
  backend_of(dy).conv2d_backward_input(dy, w, p, dx);
  return dx;
}
// dw [w_shape] from x and dy
Tensor conv_weight_grad_raw(const Tensor& x, const Tensor& dy, const Conv2dParams& p,
                            const Shape& w_shape) {
  Tensor dw = new_empty(w_shape, x.dtype(), x.device());
  backend_of(x).conv2d_backward_weight(x, dy, p, dw);
  return dw;
}
// y = conv(x, w) + b[c] in one backend call.
Tensor conv_bias_raw(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
                     int64_t Ho, int64_t Wo) {
  Tensor y = conv_output(x, w, Ho, Wo);
  backend_of(x).conv2d_bias(x, w, b, p, y);
  return y;
}
// y[n, c, h, w] += b[c], in place on a fresh output.
void add_bias_raw(const Tensor& y, const Tensor& b) {
  const Tensor bv = b.alias_with(y.shape(), {0, b.stride(0), 0, 0}, b.offset());
  backend_of(y).binary(BinaryOp::Add, y, bv, y, 1.0);
}
// t [N, C, H, W] zero-padded at the bottom and right to [N, C, H2, W2] (t itself when no padding).
Tensor pad_end_raw(const Tensor& t, int64_t H2, int64_t W2) {
  if (t.size(2) == H2 && t.size(3) == W2) return t;
  Tensor z = zeros({t.size(0), t.size(1), H2, W2}, {.dtype = t.dtype(), .device = t.device()});
  backend_of(z).copy(t, z.alias_with(t.shape(), z.strides(), z.offset()));
  return z;
}

}  // namespace

Tensor conv2d(const Tensor& x0, const Tensor& w0, const Tensor& b0, const Conv2dParams& p) {
  const char* op = "conv2d";
  CM_CHECK(x0.dim() == 4, op, ": x must be [N, C, H, W], got ", shape_str(x0.shape()));
  CM_CHECK(w0.dim() == 4, op, ": w must be [Co, C/groups, kh, kw], got ", shape_str(w0.shape()));
  check_params(p, op);
  const int64_t C = x0.size(1), Co = w0.size(0), kh = w0.size(2), kw = w0.size(3);
  CM_CHECK(
      C % p.groups == 0 && w0.size(1) == C / p.groups && Co % p.groups == 0 && kh >= 1 && kw >= 1,
      op, ": x ", shape_str(x0.shape()), " and w ", shape_str(w0.shape()),
      " do not match for groups ", p.groups,
      " (w must be [Co, C/groups, kh, kw] with C and Co divisible by groups)");
  check_bias(b0, Co, op);
  const int64_t Ho = conv_out_size(x0.size(2), kh, p.stride_h, p.pad_h, p.dil_h);
  const int64_t Wo = conv_out_size(x0.size(3), kw, p.stride_w, p.pad_w, p.dil_w);
  CM_CHECK(Ho > 0 && Wo > 0, op, ": input ", shape_str(x0.shape()), " is too small for the kernel ",
           kh, "×", kw, " with ", params_str(p), " (output ", Ho, "×", Wo, ")");
  const auto [x, w, b] = promote(x0, w0, b0, op);

  // The bias is added by the convolution kernel (Backend::conv2d_bias: fused where it can be).
  Tensor y = b.defined() ? conv_bias_raw(x, w, b, p, Ho, Wo) : conv_raw(x, w, p, Ho, Wo);
  if (needs_grad({x, w, b})) {
    const bool nx = x.requires_grad(), nw = w.requires_grad(),
               nb = b.defined() && b.requires_grad();
    const SavedTensor sx = nw ? SavedTensor(x, op) : SavedTensor();
    const SavedTensor sw = nx ? SavedTensor(w, op) : SavedTensor();
    const Shape xs = x.shape(), ws = w.shape();
    const MemoryFormat xf = memory_format_of(x);
    record(op, {x, w, b}, {y}, [=](const Grads& g) {
      Tensor dw, db;
      if (nw && nb) {  // both from one pass where the backend fuses them
        dw = new_empty(ws, g[0].dtype(), g[0].device());
        db = new_empty({ws[0]}, g[0].dtype(), g[0].device());
        backend_of(g[0]).conv2d_backward_weight_bias(sx.get(), g[0], p, dw, db);
      } else {
        if (nw) dw = conv_weight_grad_raw(sx.get(), g[0], p, ws);
        if (nb) db = sum(g[0], {0, 2, 3});
      }
      return Grads{nx ? conv_input_grad_raw(g[0], sw.get(), p, xs, xf) : Tensor(), dw, db};
    });
  }
  return y;
}

Tensor conv_transpose2d(const Tensor& x0, const Tensor& w0, const Tensor& b0, int64_t stride,
                        int64_t padding, int64_t output_padding, int64_t groups, int64_t dilation) {
  const char* op = "conv_transpose2d";
  CM_CHECK(x0.dim() == 4, op, ": x must be [N, C, H, W], got ", shape_str(x0.shape()));
  CM_CHECK(w0.dim() == 4, op, ": w must be [C, Co/groups, kh, kw], got ", shape_str(w0.shape()));
  const Conv2dParams p{stride, stride, padding, padding, dilation, dilation, groups};
  check_params(p, op);
  CM_CHECK(output_padding >= 0 && (output_padding < stride || output_padding < dilation), op,
           ": output_padding ", output_padding,
           " must be non-negative and smaller than either stride ", stride, " or dilation ",
           dilation);
  const int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  const int64_t kh = w0.size(2), kw = w0.size(3), Co = w0.size(1) * groups;
  CM_CHECK(w0.size(0) == C && C % groups == 0 && kh >= 1 && kw >= 1, op, ": x ",
           shape_str(x0.shape()), " and w ", shape_str(w0.shape()), " do not match for groups ",
           groups, " (w must be [C, Co/groups, kh, kw] with C divisible by groups)");
  check_bias(b0, Co, op);
  const int64_t Ho = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1;
  const int64_t Wo = (W - 1) * stride - 2 * padding + dilation * (kw - 1) + output_padding + 1;
  CM_CHECK(Ho > 0 && Wo > 0, op, ": output size ", Ho, "×", Wo, " is not positive for input ",
           shape_str(x0.shape()), ", kernel ", kh, "×", kw, ", ", params_str(p),
           ", output_padding ", output_padding);
  const auto [x, w, b] = promote(x0, w0, b0, op);

  // The convolution this transposes maps y [N, Co, Ho, Wo] to [N, C, Hc, Wc] with Hc ≥ H; Hc > H
  // only when output_padding ≥ stride (allowed while output_padding < dilation). Its extra rows and
  // columns see no x: x is zero-padded into them, and they are cropped from dx.
  const int64_t Hc = conv_out_size(Ho, kh, stride, padding, dilation);
  const int64_t Wc = conv_out_size(Wo, kw, stride, padding, dilation);
  Tensor y =
      conv_input_grad_raw(pad_end_raw(x, Hc, Wc), w, p, {N, Co, Ho, Wo}, memory_format_of(x));
  if (b.defined()) add_bias_raw(y, b);
  if (needs_grad({x, w, b})) {
    const bool nx = x.requires_grad(), nw = w.requires_grad(),
               nb = b.defined() && b.requires_grad();
    const SavedTensor sx = nw ? SavedTensor(x, op) : SavedTensor();
    const SavedTensor sw = nx ? SavedTensor(w, op) : SavedTensor();
    const Shape ws = w.shape();
    const MemoryFormat xf = memory_format_of(x);
    record(op, {x, w, b}, {y}, [=](const Grads& g) {
      Tensor dx;
      if (nx) {
        dx = conv_raw(g[0], sw.get(), p, Hc, Wc, xf);
        if (Hc != H || Wc != W) dx = contiguous(narrow(narrow(dx, 2, 0, H), 3, 0, W));
      }
      return Grads{dx,
                   nw ? conv_weight_grad_raw(g[0], pad_end_raw(sx.get(), Hc, Wc), p, ws) : Tensor(),
                   nb ? sum(g[0], {0, 2, 3}) : Tensor()};
    });
  }
  return y;
}

}  // namespace cm
