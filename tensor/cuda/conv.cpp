// CUDA 2-D convolution (NCHW) through cuDNN 9's legacy convolution API: cudnnConvolutionForward,
// cudnnConvolutionBackwardData (also conv_transpose2d's forward) and
// cudnnConvolutionBackwardFilter.
//
// - One cudnnHandle per device, bound to the backend's stream (cuda_impl::stream).
// - Algorithms come from cuDNN's heuristics (cudnnGet…Algorithm_v7), not from cudnnFind…: no
//   benchmarking runs, no large trial allocations, and the same choice on every run. Among the
//   candidates the heuristics rank as usable, the best-ranked deterministic one is taken (falling
//   back to the best-ranked one), so gradients are reproducible. The choice is made once per
//   (device, pass, dtype, TF32 flag, shapes, parameters) and cached.
// - The workspace is a u8 tensor from the device's caching allocator, released (to the cache) when
//   the call returns: all of cm's work on a device is ordered on its one stream.
// - Precision: f64 in f64; f32 in exact f32 (CUDNN_FMA_MATH: no tensor cores) unless
//   set_matmul_tf32(true), which lets cuDNN use TF32; f16/bf16 data with f32 accumulation
//   (CUDNN_DATA_FLOAT compute type) on tensor cores.
// - Layouts: where the activation a pass reads (x, or dy for the data gradient) is channels-last,
//   cuDNN runs the pass in NHWC (activations and filters, the filter as KRSC: a channels-last copy
//   of the [Co, C/G, kh, kw] weight), so tensor-core kernels need no NCHW↔NHWC conversions of
//   their own; otherwise in NCHW. f64 always runs NCHW. Where cuDNN's heuristics offer no NHWC
//   algorithm for a problem, the pass runs in NCHW. CM_CUDNN_NHWC=0 forces NCHW (for comparisons).
//   Operands not dense in the chosen layout are copied into it first, and an output that is not is
//   computed into a temporary and copied back.
#include <cudnn.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"

// Throws cm::Error with cuDNN's error string, the failing call, and file:line.
#define CUDNN_CHECK(expr)                                                            \
  do {                                                                               \
    cudnnStatus_t cm_cudnn_st_ = (expr);                                             \
    if (cm_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                        \
      CM_FAIL("cuDNN error: ", cudnnGetErrorString(cm_cudnn_st_), " (", #expr, ")"); \
  } while (0)

namespace cm::cuda_impl {
namespace {

cudnnHandle_t handle(int dev) {
  static std::mutex mu;
  static std::vector<cudnnHandle_t>* handles = new std::vector<cudnnHandle_t>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  if (handles->size() <= size_t(dev)) handles->resize(size_t(dev) + 1, nullptr);
  cudnnHandle_t& h = (*handles)[size_t(dev)];
  if (!h) {
    DeviceGuard g(dev);
    CUDNN_CHECK(cudnnCreate(&h));
    CUDNN_CHECK(cudnnSetStream(h, stream(dev)));
  }
  return h;
}

// ---- descriptors (owning wrappers) --------------------------------------------------------------

struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc() { CUDNN_CHECK(cudnnCreateTensorDescriptor(&d)); }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
};
struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  FilterDesc() { CUDNN_CHECK(cudnnCreateFilterDescriptor(&d)); }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
};
struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  ConvDesc() { CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d)); }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
};

// The cuDNN types of a dtype, and which math types an algorithm may run with.
struct Types {
  cudnnDataType_t data, compute;
  cudnnMathType_t math;  // requested on the convolution descriptor
  bool tensor_ops;       // tensor cores allowed (TF32 for f32, f32-accumulating for f16/bf16)
};

Types types_of(DType t, const char* op) {
  switch (t) {
    case DType::f32:
      return matmul_tf32() ? Types{CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_DEFAULT_MATH, true}
                           : Types{CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH, false};
    case DType::f64:
      return {CUDNN_DATA_DOUBLE, CUDNN_DATA_DOUBLE, CUDNN_DEFAULT_MATH, false};
    case DType::f16:
      return {CUDNN_DATA_HALF, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, true};
    case DType::bf16:
      return {CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, true};
    default:
      CM_FAIL(op, ": dtype ", dtype_name(t), " is not supported (floating only)");
  }
}

// The descriptors of one call: x [N, C, H, W], w [Co, C/G, kh, kw], y [N, Co, Ho, Wo].
struct Problem {
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  Types types;

  Problem(const Shape& xs, const Shape& ws, const Shape& ys, const Conv2dParams& p, DType t,
          bool nhwc, const char* op)
      : types(types_of(t, op)) {
    const cudnnTensorFormat_t f = nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    for (const Shape* s : {&xs, &ws, &ys})
      for (int64_t v : *s)
        CM_CHECK(v <= INT_MAX, op, ": size ", shape_str(*s), " exceeds cuDNN's 32-bit limits");
    CM_CHECK(shape_numel(xs) <= INT_MAX && shape_numel(ys) <= INT_MAX, op, ": x ", shape_str(xs),
             " or y ", shape_str(ys),
             " has more elements than cuDNN's legacy API takes (2^31 − 1)");
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x.d, f, types.data, int(xs[0]), int(xs[1]), int(xs[2]),
                                           int(xs[3])));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y.d, f, types.data, int(ys[0]), int(ys[1]), int(ys[2]),
                                           int(ys[3])));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w.d, types.data, f, int(ws[0]), int(ws[1]), int(ws[2]),
                                           int(ws[3])));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv.d, int(p.pad_h), int(p.pad_w), int(p.stride_h),
                                                int(p.stride_w), int(p.dil_h), int(p.dil_w),
                                                CUDNN_CROSS_CORRELATION, types.compute));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv.d, int(p.groups)));
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv.d, types.math));
    int dims[4];
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv.d, x.d, w.d, &dims[0], &dims[1],
                                                      &dims[2], &dims[3]));
    CM_CHECK(dims[0] == ys[0] && dims[1] == ys[1] && dims[2] == ys[2] && dims[3] == ys[3], op,
             ": output ", shape_str(ys), " does not match x ", shape_str(xs), " and w ",
             shape_str(ws), " (cuDNN computes [", dims[0], ", ", dims[1], ", ", dims[2], ", ",
             dims[3], "])");
  }
};

// ---- algorithm choice ---------------------------------------------------------------------------

enum class Pass { Forward, BackwardData, BackwardFilter };

struct Choice {
  int algo = -1;  // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t; -1: none usable
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

// The best-ranked usable candidate, deterministic ones first. Candidates whose math type the dtype
// forbids are skipped (tensor cores for f32 without TF32; down-conversion always). Where tensor
// cores are forbidden the requested math type is kept whatever a candidate reports, so that f32
// never runs in TF32 unless set_matmul_tf32(true).
template <class Perf>
Choice pick(const Perf* perf, int n, const Types& types) {
  int first = -1, first_deterministic = -1;
  for (int i = 0; i < n; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    const cudnnMathType_t m = perf[i].mathType;
    if (m == CUDNN_TENSOR_OP_MATH && !types.tensor_ops) continue;
    if (m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;
    if (first < 0) first = i;
    if (perf[i].determinism == CUDNN_DETERMINISTIC) {
      first_deterministic = i;
      break;
    }
  }
  const int i = first_deterministic >= 0 ? first_deterministic : first;
  if (i < 0) return {};
  return {int(perf[i].algo), types.tensor_ops ? perf[i].mathType : types.math};
}

Choice heuristic_choice(Pass pass, cudnnHandle_t h, const Problem& pr, const char* op) {
  int n = 0;
  switch (pass) {
    case Pass::Forward: {
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &n));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(size_t(std::max(n, 1)));
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, pr.x.d, pr.w.d, pr.conv.d, pr.y.d, n,
                                                         &n, perf.data()));
      return pick(perf.data(), n, pr.types);
    }
    case Pass::BackwardData: {
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &n));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(size_t(std::max(n, 1)));
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, pr.w.d, pr.y.d, pr.conv.d, pr.x.d,
                                                              n, &n, perf.data()));
      return pick(perf.data(), n, pr.types);
    }
    case Pass::BackwardFilter: {
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &n));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(size_t(std::max(n, 1)));
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, pr.x.d, pr.y.d, pr.conv.d,
                                                                pr.w.d, n, &n, perf.data()));
      return pick(perf.data(), n, pr.types);
    }
  }
  CM_FAIL(op, ": unknown pass");
}

// Cached per problem: the key holds everything the descriptors and the choice depend on.
Choice cached_choice(Pass pass, int dev, cudnnHandle_t h, const Problem& pr, DType t,
                     const Shape& xs, const Shape& ws, const Shape& ys, const Conv2dParams& p,
                     bool nhwc, const char* op) {
  std::vector<int64_t> key = {int64_t(pass), dev,        int64_t(t), matmul_tf32() ? 1 : 0,
                              p.stride_h,    p.stride_w, p.pad_h,    p.pad_w,
                              p.dil_h,       p.dil_w,    p.groups,   nhwc ? 1 : 0};
  for (const Shape* s : {&xs, &ws, &ys}) key.insert(key.end(), s->begin(), s->end());
  static std::mutex mu;
  static auto* cache = new std::map<std::vector<int64_t>, Choice>();  // never destroyed
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  const Choice c = heuristic_choice(pass, h, pr, op);
  std::lock_guard<std::mutex> lock(mu);
  cache->emplace(std::move(key), c);
  return c;
}

// ---- one call -----------------------------------------------------------------------------------

// Whether t's memory is dense in the layout (NCHW contiguous, or NHWC = channels-last).
bool dense_in(const Tensor& t, bool nhwc) {
  return nhwc ? is_channels_last(t) : t.is_contiguous();
}

// t when dense in the layout, else a copy that is, on the same device.
Tensor dense_copy(CudaBackend& be, const Tensor& t, bool nhwc) {
  if (dense_in(t, nhwc)) return t;
  Tensor c = empty(t.shape(), {.dtype = t.dtype(), .device = t.device()},
                   nhwc ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);
  be.copy(t, c);
  return c;
}

// NHWC unless CM_CUDNN_NHWC=0 (read once).
bool nhwc_allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("CM_CUDNN_NHWC");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return allowed;
}

// A cuDNN call of run_in: in NHWC, NOT_SUPPORTED declines the layout (run_in returns false and the
// pass runs in NCHW); any other failure throws, as CUDNN_CHECK.
#define CUDNN_OR_DECLINE(expr)                                                       \
  do {                                                                               \
    cudnnStatus_t cm_cudnn_st_ = (expr);                                             \
    if (nhwc && cm_cudnn_st_ == CUDNN_STATUS_NOT_SUPPORTED) return false;            \
    if (cm_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                        \
      CM_FAIL("cuDNN error: ", cudnnGetErrorString(cm_cudnn_st_), " (", #expr, ")"); \
  } while (0)

// Runs one pass in one layout; false where cuDNN offers no algorithm for it (or, in NHWC, declines
// the one its heuristics ranked first). Forward: out = y from
// (a = x, b = w). BackwardData: out = dx from (a = dy, b = w). BackwardFilter: out = dw from
// (a = x, b = dy). xs, ws, ys are the shapes of x, w and y.
bool run_in(CudaBackend& be, Pass pass, const char* op, const Tensor& a0, const Tensor& b0,
            const Tensor& out, const Shape& xs, const Shape& ws, const Shape& ys,
            const Conv2dParams& p, bool nhwc) {
  const DType t = out.dtype();
  const int dev = out.device().index;
  cudnnHandle_t h = handle(dev);
  Problem pr(xs, ws, ys, p, t, nhwc, op);
  const Choice c = cached_choice(pass, dev, h, pr, t, xs, ws, ys, p, nhwc, op);
  if (c.algo < 0) return false;
  CUDNN_CHECK(cudnnSetConvolutionMathType(pr.conv.d, c.math));

  // Every operand in the layout, the filter included (KRSC is the weight's channels-last order).
  const Tensor a = dense_copy(be, a0, nhwc), b = dense_copy(be, b0, nhwc);
  const Tensor o = dense_in(out, nhwc)
                       ? out
                       : empty(out.shape(), {.dtype = t, .device = out.device()},
                               nhwc ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous);

  size_t ws_bytes = 0;
  switch (pass) {
    case Pass::Forward:
      CUDNN_OR_DECLINE(cudnnGetConvolutionForwardWorkspaceSize(
          h, pr.x.d, pr.w.d, pr.conv.d, pr.y.d, cudnnConvolutionFwdAlgo_t(c.algo), &ws_bytes));
      break;
    case Pass::BackwardData:
      CUDNN_OR_DECLINE(cudnnGetConvolutionBackwardDataWorkspaceSize(
          h, pr.w.d, pr.y.d, pr.conv.d, pr.x.d, cudnnConvolutionBwdDataAlgo_t(c.algo), &ws_bytes));
      break;
    case Pass::BackwardFilter:
      CUDNN_OR_DECLINE(cudnnGetConvolutionBackwardFilterWorkspaceSize(
          h, pr.x.d, pr.y.d, pr.conv.d, pr.w.d, cudnnConvolutionBwdFilterAlgo_t(c.algo),
          &ws_bytes));
      break;
  }
  Tensor workspace;
  if (ws_bytes > 0)
    workspace = empty({int64_t(ws_bytes)}, {.dtype = DType::u8, .device = out.device()});
  void* ws_ptr = ws_bytes > 0 ? workspace.data_ptr() : nullptr;

  // Scaling factors are double for f64 data and float otherwise.
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const void* alpha = t == DType::f64 ? static_cast<const void*>(&one_d) : &one_f;
  const void* beta = t == DType::f64 ? static_cast<const void*>(&zero_d) : &zero_f;
  switch (pass) {
    case Pass::Forward:
      CUDNN_OR_DECLINE(cudnnConvolutionForward(h, alpha, pr.x.d, a.data_ptr(), pr.w.d, b.data_ptr(),
                                               pr.conv.d, cudnnConvolutionFwdAlgo_t(c.algo), ws_ptr,
                                               ws_bytes, beta, pr.y.d, o.data_ptr()));
      break;
    case Pass::BackwardData:
      CUDNN_OR_DECLINE(cudnnConvolutionBackwardData(
          h, alpha, pr.w.d, b.data_ptr(), pr.y.d, a.data_ptr(), pr.conv.d,
          cudnnConvolutionBwdDataAlgo_t(c.algo), ws_ptr, ws_bytes, beta, pr.x.d, o.data_ptr()));
      break;
    case Pass::BackwardFilter:
      CUDNN_OR_DECLINE(cudnnConvolutionBackwardFilter(
          h, alpha, pr.x.d, a.data_ptr(), pr.y.d, b.data_ptr(), pr.conv.d,
          cudnnConvolutionBwdFilterAlgo_t(c.algo), ws_ptr, ws_bytes, beta, pr.w.d, o.data_ptr()));
      break;
  }
  if (!o.same(out)) be.copy(o, out);
  return true;
}
#undef CUDNN_OR_DECLINE

// One pass: in NHWC where the activation it reads (a0: x, or dy for the data gradient) is
// channels-last and the dtype is not f64, else (or where NHWC has no algorithm) in NCHW.
void run(CudaBackend& be, Pass pass, const char* op, const Tensor& a0, const Tensor& b0,
         const Tensor& out, const Shape& xs, const Shape& ws, const Shape& ys,
         const Conv2dParams& p) {
  const DType t = out.dtype();
  CM_CHECK(a0.dtype() == t && b0.dtype() == t, op, ": operands of one dtype required, got ",
           dtype_name(a0.dtype()), ", ", dtype_name(b0.dtype()), " -> ", dtype_name(t));
  CM_CHECK(xs.size() == 4 && ws.size() == 4 && ys.size() == 4, op,
           ": expected 4-D x, w and y, got ", shape_str(xs), ", ", shape_str(ws), ", ",
           shape_str(ys));
  const int dev = out.device().index;
  DeviceGuard guard(dev);
  if (out.numel() == 0) return;
  if (shape_numel(xs) == 0 || shape_numel(ws) == 0 || shape_numel(ys) == 0) {  // an empty sum
    be.fill(out, 0.0);
    return;
  }
  const bool nhwc =
      t != DType::f64 && nhwc_allowed() && !a0.is_contiguous() && is_channels_last(a0);
  if (nhwc && run_in(be, pass, op, a0, b0, out, xs, ws, ys, p, true)) return;
  CM_CHECK(run_in(be, pass, op, a0, b0, out, xs, ws, ys, p, false), op,
           ": cuDNN offers no algorithm for this convolution (x ", shape_str(xs), ", w ",
           shape_str(ws), ", ", dtype_name(t), ")");
}

}  // namespace

void CudaBackend::conv2d(const Tensor& x, const Tensor& w, const Conv2dParams& p,
                         const Tensor& out) {
  run(*this, Pass::Forward, "conv2d", x, w, out, x.shape(), w.shape(), out.shape(), p);
}

void CudaBackend::conv2d_backward_input(const Tensor& grad_out, const Tensor& w,
                                        const Conv2dParams& p, const Tensor& grad_x) {
  run(*this, Pass::BackwardData, "conv2d_backward_input", grad_out, w, grad_x, grad_x.shape(),
      w.shape(), grad_out.shape(), p);
}

void CudaBackend::conv2d_backward_weight(const Tensor& x, const Tensor& grad_out,
                                         const Conv2dParams& p, const Tensor& grad_w) {
  run(*this, Pass::BackwardFilter, "conv2d_backward_weight", x, grad_out, grad_w, x.shape(),
      grad_w.shape(), grad_out.shape(), p);
}

}  // namespace cm::cuda_impl
