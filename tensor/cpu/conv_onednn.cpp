// oneDNN convolutions for the CPU backend: selection, primitive cache, reorders (conv_onednn.h
// explains the layouts and numerics). Built without oneDNN, uses_onednn() is always false.
#include "tensor/cpu/conv_onednn.h"

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
#include <tuple>

#include <dnnl.hpp>
#endif

namespace cm::cpu::onednn {
namespace {

// CM_CONV=im2col forces conv.cpp's path (read once).
bool forced_im2col() {
  static const bool forced = [] {
    const char* v = std::getenv("CM_CONV");
    return v != nullptr && std::strcmp(v, "im2col") == 0;
  }();
  return forced;
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

bool uses_onednn(ConvPass, const ConvShape&, const Tensor&, const Tensor&, const Tensor&) {
  return false;
}
void run(ConvPass, const ConvShape&, const Tensor&, const Tensor&, const Tensor&) {
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

using Key = std::array<int64_t, 14>;

Key key_of(ConvPass pass, const ConvShape& s) {
  return {int64_t(pass), s.N,          s.C,          s.H,       s.W,       s.Co,      s.kh,
          s.kw,          s.p.stride_h, s.p.stride_w, s.p.pad_h, s.p.pad_w, s.p.dil_h, s.p.dil_w};
}

memory::desc nhwc_desc(int64_t n, int64_t c, int64_t h, int64_t w) {
  return memory::desc({n, c, h, w}, kF32, Tag::nhwc);
}

std::unique_ptr<Entry> build(ConvPass pass, const ConvShape& s) {
  auto e = std::make_unique<Entry>();
  const memory::desc x = nhwc_desc(s.N, s.C, s.H, s.W), y = nhwc_desc(s.N, s.Co, s.Ho, s.Wo);
  const memory::desc w({s.Co, s.C, s.kh, s.kw}, kF32, Tag::any);
  const memory::dims strides{s.p.stride_h, s.p.stride_w}, dil{s.p.dil_h - 1, s.p.dil_w - 1},
      pad{s.p.pad_h, s.p.pad_w};
  // Right padding: the rows and columns the last output position reaches beyond the input (may be
  // less than the left padding, or negative, when the stride leaves input rows unused).
  const memory::dims pad_r{
      (s.Ho - 1) * s.p.stride_h + (s.kh - 1) * s.p.dil_h + 1 - s.H - s.p.pad_h,
      (s.Wo - 1) * s.p.stride_w + (s.kw - 1) * s.p.dil_w + 1 - s.W - s.p.pad_w};
  try {
    const auto alg = dnnl::algorithm::convolution_direct;
    e->fwd = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, alg, x, w, y, strides,
                                        dil, pad, pad_r),
        cpu_engine());
    const char* impl = nullptr;
    switch (pass) {
      case ConvPass::Forward:
        impl = e->fwd.impl_info_str();
        e->prim = dnnl::convolution_forward(e->fwd);
        break;
      case ConvPass::BackwardInput:
        e->bwd_data = dnnl::convolution_backward_data::primitive_desc(
            dnnl::convolution_backward_data::desc(alg, x, w, y, strides, dil, pad, pad_r),
            cpu_engine(), e->fwd);
        impl = e->bwd_data.impl_info_str();
        e->prim = dnnl::convolution_backward_data(e->bwd_data);
        break;
      case ConvPass::BackwardWeight:
        e->bwd_weights = dnnl::convolution_backward_weights::primitive_desc(
            dnnl::convolution_backward_weights::desc(alg, x, w, y, strides, dil, pad, pad_r),
            cpu_engine(), e->fwd);
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
Entry& entry_for(ConvPass pass, const ConvShape& s) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Entry> > cache;
  const Key k = key_of(pass, s);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(k);
  if (it == cache.end()) {
    if (cache.size() >= 512) cache.clear();
    it = cache.emplace(k, build(pass, s)).first;
  }
  return *it->second;
}

// A dense cm tensor (contiguous or channels-last) as oneDNN memory with its strides (dims in cm's
// logical order). Size-1 dims may carry any stride in cm; the canonical one is given instead.
memory user_memory(const Tensor& t) {
  const Shape& sh = t.shape();
  const Shape st = is_channels_last(t) ? channels_last_strides(sh) : contiguous_strides(sh);
  const memory::dims dims(sh.begin(), sh.end()), strides(st.begin(), st.end());
  return memory(memory::desc(dims, kF32, strides), cpu_engine(), t.data_ptr());
}

// `m` in the layout `want`: m itself when it already has it, else a reorder into a new buffer.
memory as_layout(memory m, const memory::desc& want, dnnl::stream& st) {
  if (m.get_desc() == want) return m;
  memory r(want, cpu_engine());
  dnnl::reorder(m, r).execute(st, m, r);
  return r;
}

bool dense_f32(const Tensor& t) {
  return t.dtype() == DType::f32 && (t.is_contiguous() || is_channels_last(t));
}

}  // namespace

bool uses_onednn(ConvPass pass, const ConvShape& s, const Tensor& a, const Tensor& b,
                 const Tensor& out) {
  if (!enabled() || in_parallel() || s.p.groups != 1 || s.C < 2 || s.N == 0 || s.Co == 0)
    return false;
  if (a.dtype() != DType::f32 || b.dtype() != DType::f32 || out.dtype() != DType::f32) return false;
  if (s.kh * s.kw == 1) {  // 1×1: only when the activations are already channels-last
    // a is the activation operand of every pass (x, gy, x)
    if (!is_channels_last(a) || a.is_contiguous()) return false;
  }
  return entry_for(pass, s).usable;
}

void run(ConvPass pass, const ConvShape& s, const Tensor& a0, const Tensor& b0, const Tensor& out) {
  Entry& e = entry_for(pass, s);
  CM_CHECK(e.usable, "conv2d: oneDNN has no kernel for this geometry (uses_onednn was not asked)");
  // Operands not dense in either layout (or with zero strides) are copied contiguous first.
  const auto dense = [](const Tensor& t) {
    if (dense_f32(t)) return t;
    Tensor c = empty(t.shape(), {.dtype = DType::f32});
    cpu_backend().copy(t, c);
    return c;
  };
  const Tensor a = dense(a0), b = dense(b0);
  const bool out_dense = dense_f32(out);
  const Tensor o = out_dense ? out : empty(out.shape(), {.dtype = DType::f32});
  // One convolution at a time: oneDNN's default build shares one scratchpad between primitives.
  static std::mutex exec_mu;
  std::lock_guard<std::mutex> lock(exec_mu);
  dnnl::stream st(cpu_engine());
  memory ua = user_memory(a), ub = user_memory(b), uo = user_memory(o);
  switch (pass) {
    case ConvPass::Forward: {  // a = x, b = w, out = y
      memory x = as_layout(ua, e.fwd.src_desc(), st), w = as_layout(ub, e.fwd.weights_desc(), st);
      memory y = uo.get_desc() == e.fwd.dst_desc() ? uo : memory(e.fwd.dst_desc(), cpu_engine());
      e.prim.execute(st, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}});
      if (y != uo) dnnl::reorder(y, uo).execute(st, y, uo);
      break;
    }
    case ConvPass::BackwardInput: {  // a = gy, b = w, out = gx
      memory gy = as_layout(ua, e.bwd_data.diff_dst_desc(), st);
      memory w = as_layout(ub, e.bwd_data.weights_desc(), st);
      memory gx = uo.get_desc() == e.bwd_data.diff_src_desc()
                      ? uo
                      : memory(e.bwd_data.diff_src_desc(), cpu_engine());
      e.prim.execute(st, {{DNNL_ARG_DIFF_DST, gy}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, gx}});
      if (gx != uo) dnnl::reorder(gx, uo).execute(st, gx, uo);
      break;
    }
    case ConvPass::BackwardWeight: {  // a = x, b = gy, out = gw
      memory x = as_layout(ua, e.bwd_weights.src_desc(), st);
      memory gy = as_layout(ub, e.bwd_weights.diff_dst_desc(), st);
      memory gw = uo.get_desc() == e.bwd_weights.diff_weights_desc()
                      ? uo
                      : memory(e.bwd_weights.diff_weights_desc(), cpu_engine());
      e.prim.execute(st, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, gy}, {DNNL_ARG_DIFF_WEIGHTS, gw}});
      if (gw != uo) dnnl::reorder(gw, uo).execute(st, gw, uo);
      break;
    }
  }
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
         std::to_string(v->patch) + " (" + isa + ")";
}

#endif

}  // namespace cm::cpu::onednn
