// The CUDA backend object: device discovery, streams, caching allocators, host<->device copies.
#include "tensor/cuda/cuda_backend.h"

#include <memory>
#include <mutex>
#include <vector>

#include "tensor/caching_allocator.h"
#include "tensor/cuda/cuda_common.h"

namespace cm {

namespace cuda {

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device / no driver" error
      return 0;
    }
    return n;
  }();
  return count;
}

bool is_available() {
  return device_count() > 0;
}

void* stream_handle(int index) {
  CM_CHECK(index >= 0 && index < device_count(), "cuda::stream_handle: no CUDA device ", index,
           " (", device_count(), " visible)");
  return static_cast<void*>(cuda_impl::stream(index));
}

}  // namespace cuda

namespace cuda_impl {

namespace {
void check_index(int index) {
  CM_CHECK(cuda::is_available(),
           "cuda: no CUDA device is available (built with CUDA, but the driver "
           "reports no device)");
  CM_CHECK(index >= 0 && index < cuda::device_count(), "cuda: device ", index, " does not exist (",
           cuda::device_count(), " devices)");
}

struct PerDevice {
  std::once_flag once;
  cudaStream_t stream = nullptr;
  std::unique_ptr<CachingAllocator> allocator;
};

PerDevice& per_device(int index) {
  static std::vector<PerDevice>* devices =
      new std::vector<PerDevice>(size_t(std::max(1, cuda::device_count())));
  check_index(index);
  PerDevice& d = (*devices)[size_t(index)];
  std::call_once(d.once, [&] {
    DeviceGuard guard(index);
    CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
    d.allocator = std::make_unique<CachingAllocator>(
        "cuda:" + std::to_string(index),
        [index](size_t n) -> void* {
          DeviceGuard g(index);
          void* p = nullptr;
          if (cudaMalloc(&p, n) != cudaSuccess) {
            cudaGetLastError();  // out of memory is reported by the caching allocator
            return nullptr;
          }
          return p;
        },
        [index](void* p) {
          DeviceGuard g(index);
          cudaFree(p);
        });
  });
  return d;
}
}  // namespace

cudaStream_t stream(int index) {
  return per_device(index).stream;
}

DeviceGuard::DeviceGuard(int index) {
  CUDA_CHECK(cudaGetDevice(&prev_));
  if (prev_ != index) CUDA_CHECK(cudaSetDevice(index));
}

DeviceGuard::~DeviceGuard() {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
}

Allocator& CudaBackend::allocator(int device_index) {
  return *per_device(device_index).allocator;
}

void CudaBackend::synchronize() {
  for (int i = 0; i < cuda::device_count(); ++i) {
    DeviceGuard g(i);
    CUDA_CHECK(cudaStreamSynchronize(stream(i)));
  }
}

void CudaBackend::copy_between_devices(const Tensor& src, const Tensor& dst) {
  CM_CHECK(src.is_contiguous() && dst.is_contiguous() && src.dtype() == dst.dtype() &&
               src.numel() == dst.numel(),
           "copy_between_devices: expects contiguous tensors of one dtype and size");
  const size_t n = src.nbytes();
  if (n == 0) return;
  const Device gpu = src.device().is_cuda() ? src.device() : dst.device();
  DeviceGuard g(gpu.index);
  cudaStream_t s = stream(gpu.index);
  if (src.device().is_cuda() && dst.device().is_cuda()) {
    if (src.device() == dst.device()) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), n, cudaMemcpyDeviceToDevice, s));
    } else {
      // peer copy on the destination's stream, after the source's queued work has finished
      CUDA_CHECK(cudaStreamSynchronize(stream(src.device().index)));
      DeviceGuard gd(dst.device().index);
      CUDA_CHECK(cudaMemcpyPeerAsync(dst.data_ptr(), dst.device().index, src.data_ptr(),
                                     src.device().index, n, stream(dst.device().index)));
    }
    return;
  }
  const cudaMemcpyKind kind =
      src.device().is_cuda() ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
  CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), n, kind, s));
  // The host buffer may be read or freed as soon as we return.
  CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace cuda_impl

Backend& cuda_backend() {
  static cuda_impl::CudaBackend* backend = new cuda_impl::CudaBackend();
  return *backend;
}

}  // namespace cm
