// CUDA random fills: element i is random_element<T>(…, i) from tensor/random.h, the function the
// CPU evaluates too. Its arithmetic uses the _rn intrinsics on the device, so the two devices
// produce the same bits for the same seed and offset. Dropout draws its mask the same way and
// scales and applies it in the same kernel.
#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"
#include "tensor/scalar_ops.h"

namespace cm::cuda_impl {
namespace {

template <class T>
__global__ void random_kernel(RandomKind kind, T* out, int64_t n, uint64_t seed,
                              uint64_t first_block, double a, double b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = random_element<T>(kind, seed, first_block, i, a, b);
}

// out = x·m with m = Bernoulli(keep) drawn as random_kernel draws it, times scale: the
// composite's three steps (random, MulScalar in place, Mul) per element, each rounded to T.
template <class T>
__global__ void dropout_kernel(const T* x, T* out, T* mask, int64_t n, uint64_t seed,
                               uint64_t first_block, double keep, double scale) {
  using C = compute_t<T>;
  const sop::MulScalarF<C> scale_by{C(scale), C(0)};
  const sop::MulF<C> mul{C(1)};
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const T m0 = random_element<T>(RandomKind::Bernoulli, seed, first_block, i, keep, 0.0);
    const T m = convert<T>(scale_by(static_cast<C>(m0)));
    out[i] = convert<T>(mul(static_cast<C>(x[i]), static_cast<C>(m)));
    if (mask) mask[i] = m;
  }
}

// Dense in memory with the same layout (contiguous, or channels-last with equal strides).
bool dense_alike(const Tensor& a, const Tensor& b) {
  if (!b.defined()) return true;
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  if (a.is_contiguous()) return b.is_contiguous();
  return is_channels_last(a) && is_channels_last(b) && a.strides() == b.strides();
}

}  // namespace

void CudaBackend::dropout(const Tensor& x, double keep, double scale, uint64_t seed,
                          uint64_t first_block, const Tensor& out, const Tensor& mask) {
  if (!is_floating(x.dtype()) || !(x.is_contiguous() || is_channels_last(x)) ||
      !dense_alike(x, out) || !dense_alike(x, mask)) {
    Backend::dropout(x, keep, scale, seed, first_block, out, mask);  // the composite
    return;
  }
  const int dev = x.device().index;
  DeviceGuard g(dev);
  if (x.numel() == 0) return;
  CM_DISPATCH_FLOAT(x.dtype(), "dropout", [&] {
    dropout_kernel<scalar_t><<<blocks_for(x.numel()), kThreads, 0, stream(dev)>>>(
        static_cast<const scalar_t*>(x.data_ptr()), static_cast<scalar_t*>(out.data_ptr()),
        mask.defined() ? static_cast<scalar_t*>(mask.data_ptr()) : nullptr, x.numel(), seed,
        first_block, keep, scale);
    CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::random(RandomKind kind, const Tensor& out, uint64_t seed, uint64_t first_block,
                         double a, double b) {
  CM_CHECK(out.is_contiguous() || is_channels_last(out),
           "random: output must be contiguous or channels-last (it is filled in memory order)");
  const int dev = out.device().index;
  DeviceGuard g(dev);
  if (out.numel() == 0) return;
  CM_DISPATCH_ALL(out.dtype(), "random", [&] {
    random_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream(dev)>>>(
        kind, static_cast<scalar_t*>(out.data_ptr()), out.numel(), seed, first_block, a, b);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cm::cuda_impl
