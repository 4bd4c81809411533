// oneDNN convolutions for the CPU backend: selection, primitive cache, reorders (conv_onednn.h
// explains the layouts and numerics). Built without oneDNN, uses_onednn() is always false.
#include "tensor/cpu/conv_onednn.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"

#ifndef CM_WITH_ONEDNN
#define CM_WITH_ONEDNN 0
#endif
#if CM_WITH_ONEDNN
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>
#endif

namespace cm::cpu::onednn {
namespace {

// CM_CONV (read once): "im2col" forces conv.cpp's path, "winograd" asks for oneDNN's Winograd
// kernels where they apply; unset or "direct": oneDNN's direct kernels.
bool conv_env_is(const char* value) {
  static const std::string v = [] {
    const char* e = std::getenv("CM_CONV");
    return std::string(e ? e : "");
  }();
  return v == value;
}
bool forced_im2col() {
  return conv_env_is("im2col");
}
[[maybe_unused]] bool winograd_requested() {
  return conv_env_is("winograd");
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> on{CM_WITH_ONEDNN && !forced_im2col()};
  return on;
}

}  // namespace

bool available() {
  return CM_WITH_ONEDNN;
}
bool enabled() {
  return enabled_flag().load(std::memory_order_relaxed);
}
void set_enabled(bool on) {
  enabled_flag().store(on && available(), std::memory_order_relaxed);
}

#if !CM_WITH_ONEDNN

bool uses_onednn(ConvPass, const ConvShape&, const Tensor&, const Tensor&, const Tensor&, bool) {
  return false;
}
void run(ConvPass, const ConvShape&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
         const Tensor&) {
  CM_CHECK(false, "conv2d: this build has no oneDNN (configure with -DCM_ONEDNN=ON)");
}
std::string conv_backend_name() {
  return "im2col+openblas";
}

#else

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr memory::data_type kF32 = memory::data_type::f32;

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// The primitives of one geometry and pass, built once (JIT code generation costs milliseconds).
// The backward passes need the forward primitive descriptor as a hint.
struct Entry {
  dnnl::convolution_forward::primitive_desc fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights;
  dnnl::primitive prim;
  bool usable = false;  // false: oneDNN has only its reference loops here (or refused the shape)
};

using Key = std::array<int64_t, 16>;

Key key_of(ConvPass pass, const ConvShape& s, bool bias) {
  return {int64_t(pass), s.N,       s.C,          s.H,          s.W,       s.Co,
          s.kh,          s.kw,      s.p.stride_h, s.p.stride_w, s.p.pad_h, s.p.pad_w,
          s.p.dil_h,     s.p.dil_w, s.p.groups,   int64_t(bias)};
}

// The weights' dims: [Co, C, kh, kw], or oneDNN's grouped [G, Co/G, C/G, kh, kw] (cm's
// [Co, C/G, kh, kw] contiguous is that array's goihw layout).
memory::dims weight_dims(const ConvShape& s) {
  const int64_t G = s.p.groups;
  if (G == 1) return {s.Co, s.C, s.kh, s.kw};
  return {G, s.Co / G, s.C / G, s.kh, s.kw};
}

memory::desc nhwc_desc(int64_t n, int64_t c, int64_t h, int64_t w) {
  return memory::desc({n, c, h, w}, kF32, Tag::nhwc);
}

// bias: the forward adds a bias, the weight gradient also gives the bias gradient.
std::unique_ptr<Entry> build(ConvPass pass, const ConvShape& s, bool bias) {
  auto e = std::make_unique<Entry>();
  // Winograd F(4×4, 3×3) (CM_CONV=winograd): 3×3, stride 1, no dilation; it runs on oneDNN's
  // blocked activation layout (nChw16c), to and from which the operands are reordered.
  const bool wino = winograd_requested() && s.kh == 3 && s.kw == 3 && s.p.stride_h == 1 &&
                    s.p.stride_w == 1 && s.p.dil_h == 1 && s.p.dil_w == 1;
  const memory::desc x =
      wino ? memory::desc({s.N, s.C, s.H, s.W}, kF32, Tag::any) : nhwc_desc(s.N, s.C, s.H, s.W);
  const memory::desc y = wino ? memory::desc({s.N, s.Co, s.Ho, s.Wo}, kF32, Tag::any)
                              : nhwc_desc(s.N, s.Co, s.Ho, s.Wo);
  const memory::desc w(weight_dims(s), kF32, Tag::any);
  const memory::dims strides{s.p.stride_h, s.p.stride_w}, dil{s.p.dil_h - 1, s.p.dil_w - 1},
      pad{s.p.pad_h, s.p.pad_w};
  // Right padding: the rows and columns the last output position reaches beyond the input (may be
  // less than the left padding, or negative, when the stride leaves input rows unused).
  const memory::dims pad_r{
      (s.Ho - 1) * s.p.stride_h + (s.kh - 1) * s.p.dil_h + 1 - s.H - s.p.pad_h,
      (s.Wo - 1) * s.p.stride_w + (s.kw - 1) * s.p.dil_w + 1 - s.W - s.p.pad_w};
  try {
    const auto alg =
        wino ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct;
    dnnl::primitive_attr attr;  // scratch memory comes from cm's allocator (cached_memory)
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const memory::desc bd({s.Co}, kF32, Tag::a);
    const bool fwd_bias = bias && pass == ConvPass::Forward;
    e->fwd = dnnl::convolution_forward::primitive_desc(
        fwd_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, x, w, bd,
                                                   y, strides, dil, pad, pad_r)
                 : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, x, w, y,
                                                   strides, dil, pad, pad_r),
        attr, cpu_engine());
    const char* impl = nullptr;
    switch (pass) {
      case ConvPass::Forward:
        impl = e->fwd.impl_info_str();
        e->prim = dnnl::convolution_forward(e->fwd);
        break;
      case ConvPass::BackwardInput:
        e->bwd_data = dnnl::convolution_backward_data::primitive_desc(
            dnnl::convolution_backward_data::desc(alg, x, w, y, strides, dil, pad, pad_r), attr,
            cpu_engine(), e->fwd);
        impl = e->bwd_data.impl_info_str();
        e->prim = dnnl::convolution_backward_data(e->bwd_data);
        break;
      case ConvPass::BackwardWeight:
        e->bwd_weights = dnnl::convolution_backward_weights::primitive_desc(
            bias ? dnnl::convolution_backward_weights::desc(alg, x, w, bd, y, strides, dil, pad,
                                                            pad_r)
                 : dnnl::convolution_backward_weights::desc(alg, x, w, y, strides, dil, pad, pad_r),
            attr, cpu_engine(), e->fwd);
        impl = e->bwd_weights.impl_info_str();
        e->prim = dnnl::convolution_backward_weights(e->bwd_weights);
        break;
    }
    // oneDNN's reference loops ("ref:any") are far slower than conv.cpp: not used.
    e->usable = impl != nullptr && std::strncmp(impl, "ref", 3) != 0;
  } catch (const dnnl::error&) {
    e->usable = false;  // unsupported geometry: conv.cpp runs it
  }
  return e;
}

// The cache of built primitives, keyed by pass and geometry. A training run has a few dozen
// geometries; the bound only guards programs that sweep shapes (the tests).
Entry& entry_for(ConvPass pass, const ConvShape& s, bool bias = false) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Entry> > cache;
  const Key k = key_of(pass, s, bias);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it == cache.end()) {
    if (cache.size() >= 512) cache.clear();
    it = cache.emplace(k, build(pass, s, bias)).first;
  }
  return *it->second;
}

// A cm tensor as oneDNN memory with its strides (dims in cm's logical order): a dense one
// (contiguous or channels-last) with its layout's canonical strides, any other with its own, which
// a reorder then reads (size-1 dims may carry any stride in cm; 1 is given for them).
memory user_memory(const Tensor& t) {
  const Shape& sh = t.shape();
  Shape st = is_channels_last(t) ? channels_last_strides(sh)
             : t.is_contiguous() ? contiguous_strides(sh)
                                 : t.strides();
  for (size_t d = 0; d < sh.size(); ++d)
    if (sh[d] == 1) st[d] = 1;
  const memory::dims dims(sh.begin(), sh.end()), strides(st.begin(), st.end());
  return memory(memory::desc(dims, kF32, strides), cpu_engine(), t.data_ptr());
}

// Memory of layout d on a block of cm's caching allocator, kept alive by `keep` until the call
// ends: oneDNN's own allocations of these sizes would be fresh pages on every call (page faults
// and zeroing were 7 % of a CT step), and cm's peak-memory figures count them this way.
memory cached_memory(const memory::desc& d, std::vector<Tensor>& keep) {
  keep.push_back(
      empty({std::max<int64_t>(int64_t((d.get_size() + 3) / 4), 1)}, {.dtype = DType::f32}));
  return memory(d, cpu_engine(), keep.back().data_ptr());
}

// `m` in the layout `want`: m itself when it already has it, else a reorder into a new buffer.
memory as_layout(memory m, const memory::desc& want, dnnl::stream& st, std::vector<Tensor>& keep) {
  if (m.get_desc() == want) return m;
  memory r = cached_memory(want, keep);
  dnnl::reorder(m, r).execute(st, m, r);
  return r;
}

bool dense_f32(const Tensor& t) {
  return t.dtype() == DType::f32 && (t.is_contiguous() || is_channels_last(t));
}

// A weight (or weight gradient) tensor as oneDNN memory: user_memory for one group, else the
// contiguous [Co, C/G, kh, kw] seen as [G, Co/G, C/G, kh, kw].
memory weight_memory(const Tensor& w, const ConvShape& s) {
  if (s.p.groups == 1) return user_memory(w);
  return memory(memory::desc(weight_dims(s), kF32, Tag::goihw), cpu_engine(), w.data_ptr());
}

}  // namespace

bool uses_onednn(ConvPass pass, const ConvShape& s, const Tensor& a, const Tensor& b,
                 const Tensor& out, bool fused_bias) {
  if (!enabled() || in_parallel() || s.C < 2 || s.N == 0 || s.Co == 0) return false;
  if (a.dtype() != DType::f32 || b.dtype() != DType::f32 || out.dtype() != DType::f32) return false;
  if (s.kh * s.kw == 1) {  // 1×1: only when the activations are already channels-last
    // a is the activation operand of every pass (x, gy, x)
    if (!is_channels_last(a) || a.is_contiguous()) return false;
  }
  return entry_for(pass, s, fused_bias).usable;
}

void run(ConvPass pass, const ConvShape& s, const Tensor& a0, const Tensor& b0, const Tensor& out,
         const Tensor& bias, const Tensor& grad_bias) {
  const Tensor& vec = pass == ConvPass::Forward ? bias : grad_bias;
  CM_CHECK((!bias.defined() || pass == ConvPass::Forward) &&
               (!grad_bias.defined() || pass == ConvPass::BackwardWeight) &&
               (!vec.defined() ||
                (vec.dtype() == DType::f32 && vec.is_contiguous() && vec.shape() == Shape{s.Co})),
           "conv2d: a fused bias must be [", s.Co,
           "] f32, contiguous, of the forward pass (its "
           "gradient of the weight-gradient pass)");
  Entry& e = entry_for(pass, s, vec.defined());
  CM_CHECK(e.usable, "conv2d: oneDNN has no kernel for this geometry (uses_onednn was not asked)");
  // f32 operands with positive strides are read where they are: in place when dense in the
  // primitive's layout, else by the reorder into it (a channel slice of a channels-last tensor,
  // the gradient of a cat, included); anything else (zero strides) is copied contiguous first.
  const auto contiguous_f32 = [](const Tensor& t) {
    if (t.dtype() == DType::f32 && t.is_contiguous()) return t;
    Tensor c = empty(t.shape(), {.dtype = DType::f32});
    cpu_backend().copy(t, c);
    return c;
  };
  const auto readable = [&](const Tensor& t) {
    bool strided = t.dtype() == DType::f32;
    for (int64_t d = 0; d < t.dim(); ++d) strided = strided && (t.size(d) == 1 || t.stride(d) > 0);
    return strided ? t : contiguous_f32(t);
  };
  // Grouped weights are read (and their gradient written) as a contiguous [Co, C/G, kh, kw].
  const bool grouped = s.p.groups != 1;
  const bool weight_out = pass == ConvPass::BackwardWeight;
  const Tensor a = readable(a0), b = grouped && !weight_out ? contiguous_f32(b0) : readable(b0);
  const bool out_dense =
      grouped && weight_out ? out.dtype() == DType::f32 && out.is_contiguous() : dense_f32(out);
  const Tensor o = out_dense ? out : empty(out.shape(), {.dtype = DType::f32});
  // One convolution at a time (the primitive cache's entries are shared).
  static std::mutex exec_mu;
  std::lock_guard<std::mutex> lock(exec_mu);
  dnnl::stream st(cpu_engine());
  std::vector<Tensor> keep;  // the buffers of this call
  memory ua = user_memory(a), ub = weight_out ? user_memory(b) : weight_memory(b, s),
         uo = weight_out ? weight_memory(o, s) : user_memory(o);
  // The primitive's output: the user's tensor when it has the primitive's layout, else a buffer
  // reordered into it afterwards.
  const auto output = [&](const memory::desc& d) {
    return uo.get_desc() == d ? uo : cached_memory(d, keep);
  };
  std::unordered_map<int, memory> args;
  memory result;
  switch (pass) {
    case ConvPass::Forward:  // a = x, b = w, out = y
      args = {{DNNL_ARG_SRC, as_layout(ua, e.fwd.src_desc(), st, keep)},
              {DNNL_ARG_WEIGHTS, as_layout(ub, e.fwd.weights_desc(), st, keep)},
              {DNNL_ARG_DST, result = output(e.fwd.dst_desc())},
              {DNNL_ARG_SCRATCHPAD, cached_memory(e.fwd.scratchpad_desc(), keep)}};
      break;
    case ConvPass::BackwardInput:  // a = gy, b = w, out = gx
      args = {{DNNL_ARG_DIFF_DST, as_layout(ua, e.bwd_data.diff_dst_desc(), st, keep)},
              {DNNL_ARG_WEIGHTS, as_layout(ub, e.bwd_data.weights_desc(), st, keep)},
              {DNNL_ARG_DIFF_SRC, result = output(e.bwd_data.diff_src_desc())},
              {DNNL_ARG_SCRATCHPAD, cached_memory(e.bwd_data.scratchpad_desc(), keep)}};
      break;
    case ConvPass::BackwardWeight:  // a = x, b = gy, out = gw
      args = {{DNNL_ARG_SRC, as_layout(ua, e.bwd_weights.src_desc(), st, keep)},
              {DNNL_ARG_DIFF_DST, as_layout(ub, e.bwd_weights.diff_dst_desc(), st, keep)},
              {DNNL_ARG_DIFF_WEIGHTS, result = output(e.bwd_weights.diff_weights_desc())},
              {DNNL_ARG_SCRATCHPAD, cached_memory(e.bwd_weights.scratchpad_desc(), keep)}};
      break;
  }
  if (bias.defined()) args[DNNL_ARG_BIAS] = user_memory(bias);
  if (grad_bias.defined()) args[DNNL_ARG_DIFF_BIAS] = user_memory(grad_bias);
  e.prim.execute(st, args);
  if (result != uo) dnnl::reorder(result, uo).execute(st, result, uo);
  st.wait();
  if (!out_dense) cpu_backend().copy(o, out);
}

std::string conv_backend_name() {
  if (!enabled()) return forced_im2col() ? "im2col+openblas (CM_CONV=im2col)" : "im2col+openblas";
  const dnnl_version_t* v = dnnl_version();
  const char* isa = "";
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx:
      isa = "avx512_core_amx";
      break;
    case dnnl::cpu_isa::avx512_core_bf16:
      isa = "avx512_core_bf16";
      break;
    case dnnl::cpu_isa::avx512_core_vnni:
      isa = "avx512_core_vnni";
      break;
    case dnnl::cpu_isa::avx512_core:
      isa = "avx512_core";
      break;
    case dnnl::cpu_isa::avx2_vnni:
      isa = "avx2_vnni";
      break;
    case dnnl::cpu_isa::avx2:
      isa = "avx2";
      break;
    default:
      isa = "sse41/avx";
      break;
  }
  return "onednn " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " (" + isa + (winograd_requested() ? ", winograd" : "") + ")";
}

#endif

}  // namespace cm::cpu::onednn
