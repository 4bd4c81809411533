#include "nn/layers.h"

#include <cmath>

namespace cm::nn {

Tensor weight_init(const Shape& shape, const std::string& mode, int64_t fan_in, int64_t fan_out,
                   Generator& gen) {
  const double fi = double(fan_in), fo = double(fan_out);
  NoGradGuard ng;
  if (mode == "xavier_uniform")
    return mul(sub(mul(rand(shape, {}, &gen), 2.0), 1.0), std::sqrt(6 / (fi + fo)));
  if (mode == "xavier_normal") return mul(randn(shape, {}, &gen), std::sqrt(2 / (fi + fo)));
  if (mode == "kaiming_uniform")
    return mul(sub(mul(rand(shape, {}, &gen), 2.0), 1.0), std::sqrt(3 / fi));
  if (mode == "kaiming_normal") return mul(randn(shape, {}, &gen), std::sqrt(1 / fi));
  CM_FAIL("weight_init: invalid init mode \"", mode,
          "\" (expected xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal)");
}

namespace {
Tensor scaled_init(const Shape& shape, const InitOptions& init, double multiplier, int64_t fan_in,
                   int64_t fan_out, Generator& gen) {
  NoGradGuard ng;
  return detach(mul(weight_init(shape, init.mode, fan_in, fan_out, gen), multiplier));
}
// A weight in the input's dtype (EDM's `self.weight.to(x.dtype)`), differentiable into the master.
Tensor as_input_dtype(const Tensor& w, const Tensor& x) {
  return w.defined() ? cm::to(w, x.dtype()) : w;
}
}  // namespace

// ---- Linear
// ---------------------------------------------------------------------------------------------
Linear::Linear(int64_t in, int64_t out, bool has_bias, const InitOptions& init, Generator& gen)
    : in_features(in), out_features(out) {
  weight = scaled_init({out, in}, init, init.weight, in, out, gen);
  register_parameter("weight", weight);
  if (has_bias) {
    bias = scaled_init({out}, init, init.bias, in, out, gen);
    register_parameter("bias", bias);
  }
}

Tensor Linear::forward(const Tensor& x) const {
  return linear(x, as_input_dtype(weight, x), as_input_dtype(bias, x));
}

Tensor dropout(const Tensor& x, double p, bool training, const ForwardContext& ctx) {
  Generator& gen = ctx.dropout ? *ctx.dropout : default_generator();
  if (!ctx.masks || !training || p == 0) return cm::dropout(x, p, training, gen);
  DropoutMasks& m = *ctx.masks;
  if (m.replay) {
    CM_CHECK(m.next < m.masks.size(), "dropout: the replaying pass has more dropouts (", m.next + 1,
             ") than the recorded one (", m.masks.size(), ")");
    const Tensor& mask = m.masks[m.next++];
    return mask.defined() ? cm::dropout_replay(x, mask, gen) : cm::dropout(x, p, training, gen);
  }
  if (is_recompute_enabled()) {
    // No mask kept between the passes: the replaying pass's generator, in the recording one's
    // state, draws the same mask again.
    m.masks.emplace_back();
    return cm::dropout(x, p, training, gen);
  }
  Tensor mask;
  Tensor y = cm::dropout(x, p, training, gen, &mask);
  m.masks.push_back(mask);
  return y;
}

// ---- Conv2d
// ---------------------------------------------------------------------------------------------
Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, bool has_bias, bool up_, bool down_,
               const std::vector<double>& filter, bool fused, const InitOptions& init,
               Generator& gen)
    : in_channels(in), out_channels(out), up(up_), down(down_), fused_resample(fused) {
  CM_CHECK(!(up && down), "Conv2d: up and down are exclusive");
  const int64_t fan_in = in * kernel * kernel, fan_out = out * kernel * kernel;
  if (kernel) {
    weight = scaled_init({out, in, kernel, kernel}, init, init.weight, fan_in, fan_out, gen);
    register_parameter("weight", weight);
    if (has_bias) {
      bias = scaled_init({out}, init, init.bias, fan_in, fan_out, gen);
      register_parameter("bias", bias);
    }
  }
  if (up || down) {
    CM_CHECK(!filter.empty(), "Conv2d: empty resample filter");
    const int64_t k = int64_t(filter.size());
    double s = 0;
    for (double v : filter) s += v;
    std::vector<float> f2(size_t(k * k));
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j)
        f2[size_t(i * k + j)] = float(filter[size_t(i)] * filter[size_t(j)] / (s * s));
    resample_filter = from_vector(f2, {1, 1, k, k});
    register_buffer("resample_filter", resample_filter);
  }
}

Tensor Conv2d::forward(const Tensor& x0) const {
  Tensor x = x0;
  const Tensor w = as_input_dtype(weight, x), b = as_input_dtype(bias, x);
  const Tensor f = resample_filter.defined() ? cm::to(resample_filter, x.dtype()) : Tensor();
  const int64_t w_pad = w.defined() ? w.size(-1) / 2 : 0;
  const int64_t f_pad = f.defined() ? (f.size(-1) - 1) / 2 : 0;
  // the filter repeated per channel for a depthwise (grouped) convolution
  auto tiled = [&](int64_t c, double gain) {
    Tensor t = expand(f, {c, 1, f.size(-2), f.size(-1)});
    return gain == 1 ? t : mul(t, gain);
  };
  // The bias goes into the last convolution by w (its kernel adds it in the epilogue and gives
  // its gradient from the weight-gradient pass, tensor/backend.h conv2d_bias). Only a layer with
  // a kernel has a bias (the constructor).
  if (fused_resample && up && w.defined()) {
    x = conv_transpose2d(x, tiled(in_channels, 4), {}, 2, std::max<int64_t>(f_pad - w_pad, 0), 0,
                         in_channels);
    x = conv2d(x, w, b,
               {.pad_h = std::max<int64_t>(w_pad - f_pad, 0),
                .pad_w = std::max<int64_t>(w_pad - f_pad, 0)});
  } else if (fused_resample && down && w.defined()) {
    x = conv2d(x, w, {}, {.pad_h = w_pad + f_pad, .pad_w = w_pad + f_pad});
    x = conv2d(x, tiled(out_channels, 1), b,
               {.stride_h = 2, .stride_w = 2, .groups = out_channels});
  } else {
    if (up) x = conv_transpose2d(x, tiled(in_channels, 4), {}, 2, f_pad, 0, in_channels);
    if (down)
      x = conv2d(
          x, tiled(in_channels, 1), {},
          {.stride_h = 2, .stride_w = 2, .pad_h = f_pad, .pad_w = f_pad, .groups = in_channels});
    if (w.defined()) x = conv2d(x, w, b, {.pad_h = w_pad, .pad_w = w_pad});
  }
  return x;
}

// ---- GroupNorm
// ------------------------------------------------------------------------------------------
GroupNorm::GroupNorm(int64_t channels, int64_t groups, int64_t min_per_group, double eps_)
    : num_groups(std::min(groups, channels / min_per_group)), eps(eps_) {
  CM_CHECK(num_groups >= 1, "GroupNorm: ", channels, " channels give no group of ", min_per_group);
  weight = ones({channels});
  bias = zeros({channels});
  register_parameter("weight", weight);
  register_parameter("bias", bias);
}

Tensor GroupNorm::forward(const Tensor& x) const {
  return group_norm(x, num_groups, as_input_dtype(weight, x), as_input_dtype(bias, x), eps);
}

Tensor GroupNorm::forward_then(const Tensor& x, const std::vector<Tensor>& extra, Then then) const {
  std::vector<Tensor> in = {x, as_input_dtype(weight, x), as_input_dtype(bias, x)};
  in.insert(in.end(), extra.begin(), extra.end());
  const int64_t groups = num_groups;
  const double e = eps;
  return checkpoint(
      "group_norm_then",
      [groups, e, then](const std::vector<Tensor>& v) {
        return then(group_norm(v[0], groups, v[1], v[2], e), {v.begin() + 3, v.end()});
      },
      in);
}

Tensor GroupNorm::forward_silu(const Tensor& x, const Tensor& shift) const {
  return group_norm_silu(x, num_groups, as_input_dtype(weight, x), as_input_dtype(bias, x), eps,
                         shift);
}

// ---- embeddings
// -------------------------------------------------------------------------------------------
PositionalEmbedding::PositionalEmbedding(int64_t c, int64_t maxp, bool ep)
    : channels(c), max_positions(maxp), endpoint(ep) {}

Tensor PositionalEmbedding::forward(const Tensor& x) const {
  const int64_t half = channels / 2;
  Tensor freqs = arange(0.0, double(half), 1.0, {.dtype = DType::f32, .device = x.device()});
  freqs = div(freqs, double(half - (endpoint ? 1 : 0)));
  freqs = pow(1.0 / double(max_positions), freqs);
  const Tensor outer =
      mul(unsqueeze(x, 1), unsqueeze(cm::to(freqs, x.dtype()), 0));  // x.ger(freqs)
  return cat({cos(outer), sin(outer)}, 1);
}

FourierEmbedding::FourierEmbedding(int64_t channels, double scale, Generator& gen) {
  NoGradGuard ng;
  freqs = detach(mul(randn({channels / 2}, {}, &gen), scale));
  register_buffer("freqs", freqs);
}

Tensor FourierEmbedding::forward(const Tensor& x) const {
  const Tensor f = cm::to(mul(freqs, 2 * M_PI), x.dtype());
  const Tensor outer = mul(unsqueeze(x, 1), unsqueeze(f, 0));
  return cat({cos(outer), sin(outer)}, 1);
}

// ---- UNetBlock
// -------------------------------------------------------------------------------------------
UNetBlock::UNetBlock(int64_t in, int64_t out, const UNetBlockOptions& o, Generator& gen)
    : in_channels(in),
      out_channels(out),
      num_heads(!o.attention      ? 0
                : o.num_heads > 0 ? o.num_heads
                                  : out / o.channels_per_head),
      dropout(o.dropout),
      skip_scale(o.skip_scale),
      adaptive_scale(o.adaptive_scale) {
  norm0 = register_module("norm0", std::make_shared<GroupNorm>(in, 32, 4, o.eps));
  conv0 = register_module("conv0", std::make_shared<Conv2d>(in, out, 3, true, o.up, o.down,
                                                            o.resample_filter, false, o.init, gen));
  affine = register_module(
      "affine", std::make_shared<Linear>(o.emb_channels, out * (o.adaptive_scale ? 2 : 1), true,
                                         o.init, gen));
  norm1 = register_module("norm1", std::make_shared<GroupNorm>(out, 32, 4, o.eps));
  conv1 = register_module(
      "conv1", std::make_shared<Conv2d>(out, out, 3, true, false, false, o.resample_filter, false,
                                        o.init_zero, gen));
  if (out != in || o.up || o.down) {
    const int64_t kernel = (o.resample_proj || out != in) ? 1 : 0;
    skip = register_module("skip", std::make_shared<Conv2d>(in, out, kernel, true, o.up, o.down,
                                                            o.resample_filter, false, o.init, gen));
  }
  if (num_heads) {
    CM_CHECK(out % num_heads == 0, "UNetBlock: ", out, " channels do not split into ", num_heads,
             " heads");
    norm2 = register_module("norm2", std::make_shared<GroupNorm>(out, 32, 4, o.eps));
    qkv = register_module(
        "qkv", std::make_shared<Conv2d>(out, out * 3, 1, true, false, false, o.resample_filter,
                                        false, o.init_attn.value_or(o.init), gen));
    proj = register_module(
        "proj", std::make_shared<Conv2d>(out, out, 1, true, false, false, o.resample_filter, false,
                                         o.init_zero, gen));
  }
}

Tensor UNetBlock::forward(const Tensor& x_in, const Tensor& emb, const ForwardContext& ctx) const {
  const Tensor orig = x_in;
  Tensor x = conv0->forward(norm0->forward_silu(x_in));
  const Tensor params = cm::to(unsqueeze(unsqueeze(affine->forward(emb), 2), 3), x.dtype());
  if (adaptive_scale) {
    const std::vector<Tensor> ss = chunk(params, 2, 1);  // scale, shift
    x = norm1->forward_then(x, ss, [](const Tensor& h, const std::vector<Tensor>& e) {
      return silu(add(e[1], mul(h, add(e[0], 1.0))));
    });
  } else {
    x = norm1->forward_silu(x, params);  // silu(norm1(x + params)) in one kernel
  }
  x = conv1->forward(nn::dropout(x, dropout, is_training(), ctx));
  x = add_scaled(x, skip ? skip->forward(orig) : orig, skip_scale);  // (x + skip)·skip_scale

  if (num_heads) {
    const int64_t n = x.size(0), c = x.size(1);
    // channels of qkv are laid out as (head, channel, q/k/v): EDM's reshape(N·heads, C/heads, 3,
    // -1)
    const Tensor t =
        reshape(qkv->forward(norm2->forward(x)), {n * num_heads, c / num_heads, 3, -1});
    const Tensor q = select(t, 2, 0), k = select(t, 2, 1), v = select(t, 2, 2);  // [n·h, c/h, HW]
    // w = softmax_k(qᵀk / √(c/h)) in f32; a = v·wᵀ
    const Tensor a =
        scaled_dot_product_attention(transpose(q, 1, 2), transpose(k, 1, 2), transpose(v, 1, 2),
                                     1.0 / std::sqrt(double(c / num_heads)));  // [n·h, HW, c/h]
    x = add_scaled(proj->forward(reshape(transpose(a, 1, 2), x.shape())), x, skip_scale);
  }
  return x;
}

}  // namespace cm::nn
