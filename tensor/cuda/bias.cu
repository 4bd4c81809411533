// The convolution's bias on the GPU (Backend::conv2d_bias and conv2d_backward_weight_bias):
// cuDNN's convolution (conv.cpp), then
// - forward: out[n, c, h, w] += b[c] by a per-channel kernel that knows the layout (contiguous or
//   channels-last), in place of the composite's broadcast add over the generic strided path; the
//   same AddF on the same values, so the composite's bits;
// - backward: grad_b[c] = Σ_{n, h, w} grad_out in two deterministic stages, per (n, c) over the
//   spatial positions (a block tree for contiguous grad_out, one thread per channel walking the
//   positions in order for channels-last, whose channels are adjacent in memory), then over n in a
//   block tree (block_reduce.cuh); f32 accumulation (f64 for f64), as the reduction it replaces,
//   in a different order.
// Other layouts (and other dtypes) fall back to the composite.
#include <climits>

#include "tensor/cuda/block_reduce.cuh"
#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"
#include "tensor/scalar_ops.h"

namespace cm::cuda_impl {
namespace {

// The layouts the kernels walk: NCHW contiguous, or channels-last dense (NHWC in memory).
enum class Walk { Nchw, Nhwc, Other };

Walk walk_of(const Tensor& t) {
  if (t.dim() != 4) return Walk::Other;
  if (t.is_contiguous()) return Walk::Nchw;
  if (is_channels_last(t)) return Walk::Nhwc;
  return Walk::Other;
}

// out[i] = out[i] + b[c] over the dense output, c from the memory index.
template <class T, bool kNhwc>
__global__ void bias_add_kernel(T* out, const T* b, int64_t total, int64_t C, int64_t HW) {
  using Cm = compute_t<T>;
  const sop::AddF<Cm> add{Cm(1)};
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = kNhwc ? i % C : (i / HW) % C;
    out[i] = convert<T>(add(static_cast<Cm>(out[i]), static_cast<Cm>(b[c])));
  }
}

// Grid N·C (contiguous): per_nc[n·C + c] = Σ_hw g[n, c, hw] in a block tree.
template <class T>
__global__ void channel_sum_nchw_kernel(const T* g, int64_t HW, acc_t<T>* per_nc) {
  using A = acc_t<T>;
  const int64_t nc = blockIdx.x;
  const T* gc = g + nc * HW;
  A s = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) s += load(gc, i);
  s = block_sum(s);
  if (threadIdx.x == 0) per_nc[nc] = s;
}

// Grid (ceil(C / blockDim), N) (channels-last): thread c of sample n sums g[n, hw, c] over hw in
// order; neighbouring threads read neighbouring channels.
template <class T>
__global__ void channel_sum_nhwc_kernel(const T* g, int64_t C, int64_t HW, acc_t<T>* per_nc) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, n = blockIdx.y;
  if (c >= C) return;
  const T* gn = g + n * HW * C + c;
  A s = 0;
  for (int64_t i = 0; i < HW; ++i) s += load(gn, i * C);
  per_nc[n * C + c] = s;
}

template <class T>
void bias_add_typed(const Tensor& out, const Tensor& b, Walk walk, int dev) {
  const int64_t total = out.numel(), C = out.size(1), HW = out.size(2) * out.size(3);
  T* o = static_cast<T*>(out.data_ptr());
  const T* bp = static_cast<const T*>(b.data_ptr());
  if (walk == Walk::Nhwc)
    bias_add_kernel<T, true><<<blocks_for(total), kThreads, 0, stream(dev)>>>(o, bp, total, C, HW);
  else
    bias_add_kernel<T, false><<<blocks_for(total), kThreads, 0, stream(dev)>>>(o, bp, total, C, HW);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void bias_grad_typed(const Tensor& g, const Tensor& grad_b, Walk walk, int dev) {
  using A = acc_t<T>;
  const int64_t N = g.size(0), C = g.size(1), HW = g.size(2) * g.size(3);
  CM_CHECK(N * C <= INT_MAX && (walk == Walk::Nchw || N <= 65535),
           "conv2d bias gradient: too many (n, c) pairs (", N, " × ", C, ")");
  cudaStream_t st = stream(dev);
  const Tensor per_nc = empty({N * C}, {.dtype = dtype_v<A>, .device = g.device()});
  A* pp = static_cast<A*>(per_nc.data_ptr());
  const T* gp = static_cast<const T*>(g.data_ptr());
  if (walk == Walk::Nhwc) {
    const unsigned t = threads_for(C);
    channel_sum_nhwc_kernel<T>
        <<<dim3(unsigned((C + t - 1) / t), unsigned(N)), t, 0, st>>>(gp, C, HW, pp);
  } else {
    channel_sum_nchw_kernel<T><<<unsigned(N * C), threads_for(HW), 0, st>>>(gp, HW, pp);
  }
  CUDA_CHECK_LAUNCH();
  sum_over_n_kernel<T>
      <<<unsigned(C), threads_for(N), 0, st>>>(pp, N, C, static_cast<T*>(grad_b.data_ptr()));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void CudaBackend::conv2d_bias(const Tensor& x, const Tensor& w, const Tensor& b,
                              const Conv2dParams& p, const Tensor& out) {
  const Walk walk = walk_of(out);
  if (walk == Walk::Other || !b.is_contiguous() || !is_floating(out.dtype()) ||
      b.dtype() != out.dtype()) {
    Backend::conv2d_bias(x, w, b, p, out);
    return;
  }
  conv2d(x, w, p, out);
  const int dev = out.device().index;
  DeviceGuard g(dev);
  if (out.numel() == 0) return;
  CM_DISPATCH_FLOAT(out.dtype(), "conv2d_bias",
                    [&] { bias_add_typed<scalar_t>(out, b, walk, dev); });
}

void CudaBackend::conv2d_backward_weight_bias(const Tensor& x, const Tensor& grad_out,
                                              const Conv2dParams& p, const Tensor& grad_w,
                                              const Tensor& grad_b) {
  const Walk walk = walk_of(grad_out);
  if (walk == Walk::Other || !grad_b.is_contiguous() || !is_floating(grad_out.dtype()) ||
      grad_b.dtype() != grad_out.dtype()) {
    Backend::conv2d_backward_weight_bias(x, grad_out, p, grad_w, grad_b);
    return;
  }
  conv2d_backward_weight(x, grad_out, p, grad_w);
  const int dev = grad_out.device().index;
  DeviceGuard g(dev);
  if (grad_out.size(0) == 0 || grad_out.size(1) == 0 || grad_out.size(2) * grad_out.size(3) == 0) {
    fill(grad_b, 0);  // sums over nothing
    return;
  }
  CM_DISPATCH_FLOAT(grad_out.dtype(), "conv2d_backward_weight_bias",
                    [&] { bias_grad_typed<scalar_t>(grad_out, grad_b, walk, dev); });
}

}  // namespace cm::cuda_impl
