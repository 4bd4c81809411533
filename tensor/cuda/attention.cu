// CUDA fused attention (Backend::attention): FlashAttention-2's algorithm (Dao, 2023) on the
// tensor cores (WMMA 16×16×16, f16/bf16 operands, f32 accumulation), for f16/bf16 q, k, v with
// head sizes that are multiples of 16 up to 256 (fused_attention_supports); every other case runs
// the composite (matmul, softmax, matmul). Blocks of 4 warps take 64 query rows (16 per warp) and
// walk the keys in tiles of 64:
// - forward: S = Q·Kᵀ of the tile into shared memory, scaled in f32; a running row maximum and sum
//   (two lanes per row, held in registers), the output accumulator (f32, shared) rescaled by
//   exp(m_old − m_new); P rounded to the input dtype (as the composite rounds its weights);
//   O += P·V. At the end O /= l, lse = m + log l (f32).
// - backward, deterministic (no atomics): Δ = rowsum(dO∘O) per query row; one kernel per key
//   tile walks the query tiles (dV += Pᵀ·dO, dK += dSᵀ·Q, with P = exp(scale·S − lse) and
//   dS = P∘(dP − Δ), dP = dO·Vᵀ), one per query tile walks the key tiles (dQ += dS·K); each block
//   owns the gradient rows it accumulates (f32 scratch in global memory, padded to whole tiles),
//   then scales and rounds them once.
// Operands are 3-D views with any strides (batch strides may be 0); tiles are loaded along the
// unit stride where there is one. Out-of-range rows and keys are zero-padded and masked (their
// weights are 0). A NaN or an infinity in a row of scores gives a NaN row, as the composite does.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"

namespace cm::cuda_impl {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBq = 64;  // query rows per block (16 per warp)
constexpr int kBk = 64;  // keys per tile
constexpr int kWarps = 4;
constexpr int kBlock = 32 * kWarps;
constexpr int kLdS = kBk + 4;  // f32 score rows (a multiple of 4 for WMMA)
constexpr int kLdP = kBk + 8;  // 16-bit weight rows (a multiple of 8)
constexpr int kMaxHead = 256;

// A 3-D operand [B, L, C] with element strides.
struct View {
  const void* p;
  int64_t sb, sr, sc;
};
View view_of(const Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// Shared memory, carved in 128-byte aligned pieces (WMMA wants 32-byte aligned fragment bases).
struct Carver {
  size_t off = 0;
  template <class U>
  __host__ __device__ size_t take(size_t count) {
    const size_t at = off;
    off += (count * sizeof(U) + 127) / 128 * 128;
    return at;
  }
};

// rows × cols of a tile at rows [r0, r0 + rows) of batch b of v into dst (leading dim ld), rows at
// or past `valid` zero; all threads of the block take part. Along the unit stride where there is
// one, so that neighbouring threads read neighbouring elements.
template <class T>
__device__ void load_tile(T* dst, int ld, const View& v, int64_t b, int64_t r0, int64_t valid,
                          int cols) {
  const T* src = static_cast<const T*>(v.p) + b * v.sb + r0 * v.sr;
  const int n = kBq * cols;
  const bool by_rows = !(v.sr == 1 && v.sc != 1);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int r = by_rows ? i / cols : i % kBq, c = by_rows ? i % cols : i / kBq;
    dst[r * ld + c] = r0 + r < valid ? src[r * v.sr + c * v.sc] : from_f32<T>(0.f);
  }
}

// acc(16 × 16) = A(16 × K) · B(K × 16) with A row-major (lda) and B col-major (ldb) or row-major.
template <class T, class LayoutB>
__device__ __forceinline__ void mma_tile(wmma::fragment<wmma::accumulator, 16, 16, 16, float>& acc,
                                         const T* a, int lda, const T* b, int ldb, int K) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
  for (int k = 0; k < K; k += 16) {
    wmma::load_matrix_sync(fa, a + k, lda);
    if constexpr (std::is_same_v<LayoutB, wmma::col_major>)
      wmma::load_matrix_sync(fb, b + k, ldb);  // column j of B is row j of a row-major matrix
    else
      wmma::load_matrix_sync(fb, b + int64_t(k) * ldb, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// S (16 × 64, f32, ld kLdS) = A (16 × K) · Bᵀ with B (64 × K) row-major: one warp.
template <class T>
__device__ void warp_scores(float* S, const T* a, int lda, const T* b, int ldb, int K) {
  for (int j = 0; j < kBk / 16; ++j) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.f);
    mma_tile<T, wmma::col_major>(acc, a, lda, b + j * 16 * ldb, ldb, K);
    wmma::store_matrix_sync(S + j * 16, acc, kLdS, wmma::mem_row_major);
  }
}

// acc (global f32, 16 × C, ld C) += A (16 × 64, ld lda; col-major when kTransA: Aᵀ of a
// row-major 64 × 16 block) · B (64 × C, row-major, ld ldb): one warp, C a multiple of 16.
template <class T, bool kTransA>
__device__ void warp_accumulate(float* acc_rows, int C, const T* a, int lda, const T* b, int ldb) {
  using LayoutA = std::conditional_t<kTransA, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
  for (int j = 0; j < C; j += 16) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(acc, acc_rows + j, C, wmma::mem_row_major);
    for (int k = 0; k < kBk; k += 16) {
      wmma::load_matrix_sync(fa, kTransA ? a + int64_t(k) * lda : a + k, lda);
      wmma::load_matrix_sync(fb, b + int64_t(k) * ldb + j, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(acc_rows + j, acc, C, wmma::mem_row_major);
  }
}

struct FwdArgs {
  View q, k, v;
  void* out;   // [B, Lq, Dv] contiguous
  float* lse;  // [B, Lq]
  int64_t B, Lq, Lk;
  int D, Dv;
  float scale;
};

__host__ __device__ size_t fwd_smem(int D, int Dv, size_t* offs) {
  Carver c;
  offs[0] = c.take<uint16_t>(size_t(kBq) * (D + 8));   // Q
  offs[1] = c.take<uint16_t>(size_t(kBk) * (D + 8));   // K
  offs[2] = c.take<uint16_t>(size_t(kBk) * (Dv + 8));  // V
  offs[3] = c.take<float>(size_t(kBq) * kLdS);         // S
  offs[4] = c.take<uint16_t>(size_t(kBq) * kLdP);      // P
  offs[5] = c.take<float>(size_t(kBq) * (Dv + 4));     // O
  offs[6] = c.take<float>(kBq);                        // 1/l
  return c.off;
}

template <class T>
__global__ void __launch_bounds__(kBlock) attention_fwd_kernel(FwdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  size_t offs[7];
  fwd_smem(a.D, a.Dv, offs);
  const int ldq = a.D + 8, ldv = a.Dv + 8, ldo = a.Dv + 4;
  T* Qs = reinterpret_cast<T*>(smem + offs[0]);
  T* Ks = reinterpret_cast<T*>(smem + offs[1]);
  T* Vs = reinterpret_cast<T*>(smem + offs[2]);
  float* Ss = reinterpret_cast<float*>(smem + offs[3]);
  T* Ps = reinterpret_cast<T*>(smem + offs[4]);
  float* Os = reinterpret_cast<float*>(smem + offs[5]);
  float* inv_l = reinterpret_cast<float*>(smem + offs[6]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = warp * 16 + lane / 2, half = lane % 2;  // this lane's row and half of it
  const int64_t r0 = int64_t(blockIdx.x) * kBq;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    load_tile(Qs, ldq, a.q, b, r0, a.Lq, a.D);
    for (int i = threadIdx.x; i < kBq * ldo; i += blockDim.x) Os[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int64_t k0 = 0; k0 < a.Lk; k0 += kBk) {
      __syncthreads();  // the previous tile's K and V are no longer read
      load_tile(Ks, ldq, a.k, b, k0, a.Lk, a.D);
      load_tile(Vs, ldv, a.v, b, k0, a.Lk, a.Dv);
      __syncthreads();
      warp_scores(Ss + warp * 16 * kLdS, Qs + warp * 16 * ldq, ldq, Ks, ldq, a.D);
      __syncwarp();
      const float* srow = Ss + row * kLdS;
      const int c_lo = half * (kBk / 2), c_hi = c_lo + kBk / 2;
      const int valid = a.Lk - k0 < kBk ? int(a.Lk - k0) : kBk;
      float mx = -INFINITY;
      for (int c = c_lo; c < c_hi && c < valid; ++c) mx = fmaxf(mx, srow[c] * a.scale);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_new = fmaxf(m, mx);
      float sum = 0.f;
      for (int c = c_lo; c < c_hi; ++c) {
        const float p = c < valid ? expf(srow[c] * a.scale - m_new) : 0.f;
        Ps[row * kLdP + c] = from_f32<T>(p);
        sum += p;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      const float alpha = expf(m - m_new);  // 0 on the first tile (m = −∞)
      l = l * alpha + sum;
      m = m_new;
      for (int c = half * (a.Dv / 2); c < (half + 1) * (a.Dv / 2); ++c) Os[row * ldo + c] *= alpha;
      __syncwarp();
      // O (this warp's 16 rows) += P · V
      for (int j = 0; j < a.Dv; j += 16) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        float* o = Os + warp * 16 * ldo + j;
        wmma::load_matrix_sync(acc, o, ldo, wmma::mem_row_major);
        mma_tile<T, wmma::row_major>(acc, Ps + warp * 16 * kLdP, kLdP, Vs + j, ldv, kBk);
        wmma::store_matrix_sync(o, acc, ldo, wmma::mem_row_major);
      }
      __syncwarp();
    }
    if (half == 0) {
      inv_l[row] = 1.f / l;
      if (r0 + row < a.Lq) a.lse[b * a.Lq + r0 + row] = m + logf(l);
    }
    __syncwarp();
    T* out = static_cast<T*>(a.out) + (b * a.Lq + r0) * a.Dv;
    for (int i = lane; i < 16 * a.Dv; i += 32) {
      const int r = warp * 16 + i / a.Dv, c = i % a.Dv;
      if (r0 + r < a.Lq) out[int64_t(r) * a.Dv + c] = from_f32<T>(Os[r * ldo + c] * inv_l[r]);
    }
    __syncthreads();  // Qs and Os are reloaded for the next batch index
  }
}

// delta[b·Lq + r] = Σ_c dO[b, r, c]·O[b, r, c]: one warp per row.
template <class T>
__global__ void attention_delta_kernel(View dout, const T* out, float* delta, int64_t B, int64_t Lq,
                                       int Dv) {
  const int64_t rows = B * Lq;
  const int lane = threadIdx.x % 32;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; i < rows;
       i += int64_t(gridDim.x) * blockDim.x / 32) {
    const int64_t b = i / Lq, r = i % Lq;
    const T* g = static_cast<const T*>(dout.p) + b * dout.sb + r * dout.sr;
    const T* o = out + i * Dv;
    float s = 0.f;
    for (int c = lane; c < Dv; c += 32) s += to_f32(g[c * dout.sc]) * to_f32(o[c]);
    for (int w = 16; w > 0; w /= 2) s += __shfl_xor_sync(0xffffffffu, s, w);
    if (lane == 0) delta[i] = s;
  }
}

struct BwdArgs {
  View q, k, v, dout;
  const float* lse;    // [B, Lq]
  const float* delta;  // [B, Lq]
  float* dq;           // [B, Lq_pad, D] f32 scratch, zero
  float* dk;           // [B, Lk_pad, D]
  float* dv;           // [B, Lk_pad, Dv]
  int64_t B, Lq, Lk, Lq_pad, Lk_pad;
  int D, Dv;
  float scale;
};

__host__ __device__ size_t bwd_smem(int D, int Dv, size_t* offs) {
  Carver c;
  offs[0] = c.take<uint16_t>(size_t(kBq) * (D + 8));   // Q
  offs[1] = c.take<uint16_t>(size_t(kBq) * (Dv + 8));  // dO
  offs[2] = c.take<uint16_t>(size_t(kBk) * (D + 8));   // K
  offs[3] = c.take<uint16_t>(size_t(kBk) * (Dv + 8));  // V
  offs[4] = c.take<float>(size_t(kBq) * kLdS);         // S
  offs[5] = c.take<float>(size_t(kBq) * kLdS);         // dP
  offs[6] = c.take<uint16_t>(size_t(kBq) * kLdP);      // P
  offs[7] = c.take<uint16_t>(size_t(kBq) * kLdP);      // dS
  offs[8] = c.take<float>(kBq);                        // lse of the query tile
  offs[9] = c.take<float>(kBq);                        // Δ of the query tile
  return c.off;
}

struct BwdSmem {
  void* Qs;
  void* dOs;
  void* Ks;
  void* Vs;
  float* Ss;
  float* dPs;
  void* Ps;
  void* dSs;
  float* lse;
  float* delta;
};

__device__ BwdSmem carve_bwd(unsigned char* smem, int D, int Dv) {
  size_t o[10];
  bwd_smem(D, Dv, o);
  return {smem + o[0],
          smem + o[1],
          smem + o[2],
          smem + o[3],
          reinterpret_cast<float*>(smem + o[4]),
          reinterpret_cast<float*>(smem + o[5]),
          smem + o[6],
          smem + o[7],
          reinterpret_cast<float*>(smem + o[8]),
          reinterpret_cast<float*>(smem + o[9])};
}

// The query tile's lse and Δ into shared memory: rows past Lq get lse = +∞ (weights 0), Δ = 0.
__device__ void load_row_stats(const BwdArgs& a, const BwdSmem& s, int64_t b, int64_t r0) {
  for (int r = threadIdx.x; r < kBq; r += blockDim.x) {
    const bool ok = r0 + r < a.Lq;
    s.lse[r] = ok ? a.lse[b * a.Lq + r0 + r] : INFINITY;
    s.delta[r] = ok ? a.delta[b * a.Lq + r0 + r] : 0.f;
  }
}

// For this warp's 16 query rows against the key tile at k0: S = Q·Kᵀ, dP = dO·Vᵀ, then
// P = exp(scale·S − lse) and dS = P∘(dP − Δ), both rounded to T (P only when `want_p`).
template <class T>
__device__ void warp_weights(const BwdArgs& a, const BwdSmem& s, int64_t k0, bool want_p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ldq = a.D + 8, ldv = a.Dv + 8;
  float* S = s.Ss + warp * 16 * kLdS;
  float* dP = s.dPs + warp * 16 * kLdS;
  warp_scores(S, static_cast<const T*>(s.Qs) + warp * 16 * ldq, ldq, static_cast<const T*>(s.Ks),
              ldq, a.D);
  warp_scores(dP, static_cast<const T*>(s.dOs) + warp * 16 * ldv, ldv, static_cast<const T*>(s.Vs),
              ldv, a.Dv);
  __syncwarp();
  T* P = static_cast<T*>(s.Ps);
  T* dS = static_cast<T*>(s.dSs);
  for (int i = lane; i < 16 * kBk; i += 32) {
    const int r = warp * 16 + i / kBk, c = i % kBk;
    const int rr = i / kBk;
    const float p = k0 + c < a.Lk ? expf(S[rr * kLdS + c] * a.scale - s.lse[r]) : 0.f;
    const float ds = p * (dP[rr * kLdS + c] - s.delta[r]);
    if (want_p) P[r * kLdP + c] = from_f32<T>(p);
    dS[r * kLdP + c] = from_f32<T>(ds);
  }
}

// Grid (key tiles, batch): dK and dV of one key tile, over every query tile.
template <class T>
__global__ void __launch_bounds__(kBlock) attention_dkdv_kernel(BwdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const BwdSmem s = carve_bwd(smem, a.D, a.Dv);
  const int warp = threadIdx.x / 32;
  const int ldq = a.D + 8, ldv = a.Dv + 8;
  const int64_t k0 = int64_t(blockIdx.x) * kBk;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    load_tile(static_cast<T*>(s.Ks), ldq, a.k, b, k0, a.Lk, a.D);
    load_tile(static_cast<T*>(s.Vs), ldv, a.v, b, k0, a.Lk, a.Dv);
    float* dk_rows = a.dk + (b * a.Lk_pad + k0 + warp * 16) * a.D;
    float* dv_rows = a.dv + (b * a.Lk_pad + k0 + warp * 16) * a.Dv;
    for (int64_t r0 = 0; r0 < a.Lq; r0 += kBq) {
      __syncthreads();  // the previous query tile is no longer read
      load_tile(static_cast<T*>(s.Qs), ldq, a.q, b, r0, a.Lq, a.D);
      load_tile(static_cast<T*>(s.dOs), ldv, a.dout, b, r0, a.Lq, a.Dv);
      load_row_stats(a, s, b, r0);
      __syncthreads();
      warp_weights<T>(a, s, k0, true);  // rows: this warp's query rows
      __syncthreads();
      // now rows are keys: this warp's 16 keys of the tile
      warp_accumulate<T, true>(dv_rows, a.Dv, static_cast<const T*>(s.Ps) + warp * 16, kLdP,
                               static_cast<const T*>(s.dOs), ldv);
      warp_accumulate<T, true>(dk_rows, a.D, static_cast<const T*>(s.dSs) + warp * 16, kLdP,
                               static_cast<const T*>(s.Qs), ldq);
    }
    __syncthreads();  // K and V are reloaded for the next batch index
  }
}

// Grid (query tiles, batch): dQ of one query tile, over every key tile.
template <class T>
__global__ void __launch_bounds__(kBlock) attention_dq_kernel(BwdArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const BwdSmem s = carve_bwd(smem, a.D, a.Dv);
  const int warp = threadIdx.x / 32;
  const int ldq = a.D + 8, ldv = a.Dv + 8;
  const int64_t r0 = int64_t(blockIdx.x) * kBq;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    load_tile(static_cast<T*>(s.Qs), ldq, a.q, b, r0, a.Lq, a.D);
    load_tile(static_cast<T*>(s.dOs), ldv, a.dout, b, r0, a.Lq, a.Dv);
    load_row_stats(a, s, b, r0);
    float* dq_rows = a.dq + (b * a.Lq_pad + r0 + warp * 16) * a.D;
    for (int64_t k0 = 0; k0 < a.Lk; k0 += kBk) {
      __syncthreads();  // the previous key tile is no longer read
      load_tile(static_cast<T*>(s.Ks), ldq, a.k, b, k0, a.Lk, a.D);
      load_tile(static_cast<T*>(s.Vs), ldv, a.v, b, k0, a.Lk, a.Dv);
      __syncthreads();
      warp_weights<T>(a, s, k0, false);
      __syncwarp();
      warp_accumulate<T, false>(dq_rows, a.D, static_cast<const T*>(s.dSs) + warp * 16 * kLdP, kLdP,
                                static_cast<const T*>(s.Ks), ldq);
    }
    __syncthreads();
  }
}

// dst[b, r, c] = scale·src[b, r, c] rounded to T (src [B, L_pad, C], dst [B, L, C] contiguous).
template <class T>
__global__ void attention_finish_kernel(const float* src, T* dst, int64_t B, int64_t L,
                                        int64_t L_pad, int C, float scale) {
  const int64_t n = B * L * C;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, r = (i / C) % L, b = i / (C * L);
    dst[i] = from_f32<T>(src[(b * L_pad + r) * C + c] * scale);
  }
}

// Opts a kernel into `bytes` of dynamic shared memory, or says why it cannot.
template <class K>
void prepare(K kernel, size_t bytes, int dev, const char* op) {
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  CM_CHECK(bytes <= size_t(optin), op, ": the fused kernel needs ", bytes,
           " bytes of shared memory per block, the device has ", optin);
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

dim3 grid_of(int64_t tiles, int64_t B) {
  return dim3(unsigned(tiles), unsigned(std::min<int64_t>(B, 65535)));
}

template <class T>
void attention_typed(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                     const Tensor& out, const Tensor& lse) {
  const int dev = q.device().index;
  FwdArgs a{
      view_of(q),  view_of(k), view_of(v), out.data_ptr(), static_cast<float*>(lse.data_ptr()),
      q.size(0),   q.size(1),  k.size(1),  int(q.size(2)), int(v.size(2)),
      float(scale)};
  size_t offs[7];
  const size_t bytes = fwd_smem(a.D, a.Dv, offs);
  prepare(attention_fwd_kernel<T>, bytes, dev, "attention");
  const int64_t tiles = (a.Lq + kBq - 1) / kBq;
  attention_fwd_kernel<T><<<grid_of(tiles, a.B), kBlock, bytes, stream(dev)>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void attention_backward_typed(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, double scale,
                              const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) {
  const int dev = q.device().index;
  cudaStream_t st = stream(dev);
  const int64_t B = q.size(0), Lq = q.size(1), Lk = k.size(1);
  const int D = int(q.size(2)), Dv = int(v.size(2));
  const int64_t Lq_pad = (Lq + kBq - 1) / kBq * kBq, Lk_pad = (Lk + kBk - 1) / kBk * kBk;
  const TensorOptions f32{.dtype = DType::f32, .device = q.device()};
  const Tensor delta = empty({B, Lq}, f32);
  const Tensor dq = grad_q.defined() ? empty({B, Lq_pad, D}, f32) : Tensor();
  const Tensor dk = empty({B, Lk_pad, D}, f32), dv = empty({B, Lk_pad, Dv}, f32);
  for (const Tensor* t : {&dq, &dk, &dv})
    if (t->defined()) CUDA_CHECK(cudaMemsetAsync(t->data_ptr(), 0, t->nbytes(), st));
  attention_delta_kernel<T><<<blocks_for(B * Lq * 32), kThreads, 0, st>>>(
      view_of(grad_out), static_cast<const T*>(out.data_ptr()),
      static_cast<float*>(delta.data_ptr()), B, Lq, Dv);
  CUDA_CHECK_LAUNCH();
  BwdArgs a{view_of(q),
            view_of(k),
            view_of(v),
            view_of(grad_out),
            static_cast<const float*>(lse.data_ptr()),
            static_cast<const float*>(delta.data_ptr()),
            dq.defined() ? static_cast<float*>(dq.data_ptr()) : nullptr,
            static_cast<float*>(dk.data_ptr()),
            static_cast<float*>(dv.data_ptr()),
            B,
            Lq,
            Lk,
            Lq_pad,
            Lk_pad,
            D,
            Dv,
            float(scale)};
  size_t offs[10];
  const size_t bytes = bwd_smem(D, Dv, offs);
  if (grad_k.defined() || grad_v.defined()) {
    prepare(attention_dkdv_kernel<T>, bytes, dev, "attention_backward");
    attention_dkdv_kernel<T><<<grid_of(Lk_pad / kBk, B), kBlock, bytes, st>>>(a);
    CUDA_CHECK_LAUNCH();
  }
  if (grad_q.defined()) {
    prepare(attention_dq_kernel<T>, bytes, dev, "attention_backward");
    attention_dq_kernel<T><<<grid_of(Lq_pad / kBq, B), kBlock, bytes, st>>>(a);
    CUDA_CHECK_LAUNCH();
  }
  const auto finish = [&](const Tensor& src, const Tensor& dst, int64_t L, int64_t L_pad, int C,
                          float s) {
    if (!dst.defined()) return;
    attention_finish_kernel<T><<<blocks_for(dst.numel()), kThreads, 0, st>>>(
        static_cast<const float*>(src.data_ptr()), static_cast<T*>(dst.data_ptr()), B, L, L_pad, C,
        s);
    CUDA_CHECK_LAUNCH();
  };
  finish(dq, grad_q, Lq, Lq_pad, D, float(scale));
  finish(dk, grad_k, Lk, Lk_pad, D, float(scale));
  finish(dv, grad_v, Lk, Lk_pad, Dv, 1.f);
}

// The kernels' operands, or an error naming `op` (the op routes others to the composite).
void check_operands(const CudaBackend& be, const char* op, const Tensor& q, const Tensor& v) {
  CM_CHECK(be.fused_attention_supports(q.dtype(), q.size(2), v.size(2)), op,
           ": the CUDA kernel takes f16/bf16 with head sizes that are multiples of 16 up to 256, "
           "got ",
           dtype_name(q.dtype()), " with ", q.size(2), " and ", v.size(2));
}

}  // namespace

bool CudaBackend::fused_attention_supports(DType dtype, int64_t d, int64_t dv) const {
  const auto head_ok = [](int64_t n) { return n >= 16 && n <= kMaxHead && n % 16 == 0; };
  return (dtype == DType::f16 || dtype == DType::bf16) && head_ok(d) && head_ok(dv);
}

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                            const Tensor& out, const Tensor& lse) {
  check_operands(*this, "attention", q, v);
  DeviceGuard g(q.device().index);
  if (q.dtype() == DType::f16)
    attention_typed<__half>(q, k, v, scale, out, lse);
  else
    attention_typed<__nv_bfloat16>(q, k, v, scale, out, lse);
}

void CudaBackend::attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& out, const Tensor& lse,
                                     double scale, const Tensor& grad_q, const Tensor& grad_k,
                                     const Tensor& grad_v) {
  check_operands(*this, "attention_backward", q, v);
  DeviceGuard g(q.device().index);
  if (q.dtype() == DType::f16)
    attention_backward_typed<__half>(grad_out, q, k, v, out, lse, scale, grad_q, grad_k, grad_v);
  else
    attention_backward_typed<__nv_bfloat16>(grad_out, q, k, v, out, lse, scale, grad_q, grad_k,
                                            grad_v);
}

}  // namespace cm::cuda_impl
