// Internal to the CUDA backend (tensor/cuda): error checks, the per-device stream, device guards,
// launch sizes, and the device-side view of a LoopPlan. Public headers never include this file.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "tensor/backend.h"
#include "tensor/loop_plan.h"

// Throws cm::Error with the CUDA error string, the failing call, and file:line.
#define CUDA_CHECK(expr)                                                           \
  do {                                                                             \
    cudaError_t cm_cuda_err_ = (expr);                                             \
    if (cm_cuda_err_ != cudaSuccess)                                               \
      CM_FAIL("CUDA error: ", cudaGetErrorString(cm_cuda_err_), " (", #expr, ")"); \
  } while (0)

// After a kernel launch.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace cm::cuda_impl {

// The stream all of cm's work on device `index` is queued on (created on first use).
cudaStream_t stream(int index);

// Makes `index` the current device for the scope.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

inline constexpr int kThreads = 256;
// Blocks for a grid-stride loop over n elements.
inline unsigned blocks_for(int64_t n) {
  return unsigned(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 65535 * 16));
}

// A LoopPlan's shape and strides, passed to kernels by value.
struct OffsetCalc {
  int ndim = 0;
  int nops = 0;
  bool contiguous = false;  // every operand is one unit-stride run: offsets are the index itself
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxOperands][kMaxDims] = {};

  explicit OffsetCalc(const LoopPlan& p) : ndim(p.ndim), nops(p.nops) {
    for (int d = 0; d < kMaxDims; ++d) {
      shape[d] = p.shape[d];
      for (int k = 0; k < kMaxOperands; ++k) strides[k][d] = p.strides[k][d];
    }
    contiguous = p.ndim == 0;
    if (p.ndim == 1) {
      contiguous = true;
      for (int k = 0; k < kMaxOperands; ++k)
        if (k < p.nops && p.strides[k][0] != 1) contiguous = false;
    }
  }

#if defined(__CUDACC__)
  // Element offsets of index i for every operand, in index type I: int64_t always works; int32_t
  // (several times cheaper divisions) where every index and offset of the plan fits.
  template <class I>
  __device__ __forceinline__ void offsets(I i, I* off) const {
#pragma unroll
    for (int k = 0; k < kMaxOperands; ++k) off[k] = contiguous ? i : I(0);
    if (contiguous) return;
    for (int d = ndim - 1; d >= 0; --d) {
      const I s = I(shape[d]);
      const I q = i / s;
      const I r = i - q * s;
      i = q;
      for (int k = 0; k < nops; ++k) off[k] += r * I(strides[k][d]);
    }
  }
#endif
};

}  // namespace cm::cuda_impl
