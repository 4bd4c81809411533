// Internal to the CUDA backend: the fixed-tree block sum and the per-channel sums over the batch
// that norm.cu and bias.cu share. No atomics: every result is bit-for-bit reproducible.
#pragma once

#include <type_traits>

#include "tensor/cuda/cuda_common.h"

namespace cm::cuda_impl {

// Accumulation type of the floating kernels: f64 for f64, f32 otherwise.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T>
__device__ __forceinline__ acc_t<T> load(const T* p, int64_t i) {
  return acc_t<T>(static_cast<compute_t<T>>(p[i]));
}

// Sum of one value per thread over a block of power-of-two size ≤ kThreads, in a fixed tree; the
// result is returned to every thread.
template <class A>
__device__ A block_sum(A v) {
  __shared__ A smem[kThreads];
  smem[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  const A r = smem[0];
  __syncthreads();
  return r;
}

// A power of two in [32, kThreads] covering n items per block where possible.
inline unsigned threads_for(int64_t n) {
  unsigned t = 32;
  while (t < unsigned(kThreads) && int64_t(t) < n) t *= 2;
  return t;
}

// Grid C: out[c] = Σ_n per_nc[n, c] (block tree over n), rounded once to T. Launch with
// threads_for(N) threads.
template <class T>
__global__ void sum_over_n_kernel(const acc_t<T>* per_nc, int64_t N, int64_t C, T* out) {
  using A = acc_t<T>;
  const int64_t c = blockIdx.x;
  A s = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) s += per_nc[n * C + c];
  s = block_sum(s);
  if (threadIdx.x == 0) out[c] = convert<T>(s);
}

}  // namespace cm::cuda_impl
