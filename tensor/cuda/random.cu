// CUDA random fills: element i is random_element<T>(…, i) from tensor/random.h, the function the
// CPU evaluates too. Its arithmetic uses the _rn intrinsics on the device, so the two devices
// produce the same bits for the same seed and offset.
#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"

namespace cm::cuda_impl {
namespace {

template <class T>
__global__ void random_kernel(RandomKind kind, T* out, int64_t n, uint64_t seed,
                              uint64_t first_block, double a, double b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = random_element<T>(kind, seed, first_block, i, a, b);
}

}  // namespace

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
