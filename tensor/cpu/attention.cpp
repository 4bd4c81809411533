// CPU fused attention (Backend::attention): FlashAttention-2's algorithm (Dao, 2023) with the
// products on OpenBLAS. The queries go in blocks of kBq rows, the keys in chunks of kBk; for each
// block the scores of one chunk at a time exist (kBq × kBk), never the L × L matrix:
// - forward: S = scale·Q·Kᵀ of the chunk, a running row maximum m and sum l of exp(S − m) (the
//   output so far rescaled by exp(m_old − m_new) when the maximum grows), O += P·V; at the end
//   O /= l and lse = m + log l, all the backward needs besides q, k, v and the output;
// - backward: P = exp(S − lse) again per (block, chunk), then dV += Pᵀ·dO, dP = dO·Vᵀ,
//   dS = P∘(dP − Δ) with Δ = rowsum(dO∘O), dQ += scale·dS·K, dK += scale·dSᵀ·Q.
// f16 and bf16 compute in f32 (the weights P stay f32), f64 in f64; e^x is the elementwise ops'
// (sop::exp: a vectorisable polynomial in f32, std::exp in f64). Items: the forward's (batch
// index, query block) pairs; the backward's batch indices, each walking its blocks and chunks in
// order (no two items write the same gradient row), so the result never depends on the thread
// count. OpenBLAS runs on one thread inside the items (tensor/cpu/matmul.cpp says why).
#include <cmath>
#include <limits>
#include <vector>

#include "tensor/cpu/blas.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"
#include "tensor/scalar_ops.h"

namespace cm::cpu {
namespace {

constexpr int64_t kBq = 64;   // query rows per block
constexpr int64_t kBk = 256;  // keys per chunk

template <class T>
constexpr DType compute_dtype = std::is_same_v<T, double> ? DType::f64 : DType::f32;

// C = alpha·op(A)·op(B) + beta·C, row-major with leading dimensions.
template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    blas::sgemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
  else
    blas::dgemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

// x as a contiguous tensor of the compute dtype: x itself when it is one, else a copy.
template <class T>
Tensor packed(const Tensor& x) {
  if (x.dtype() == compute_dtype<T> && x.is_contiguous()) return x;
  Tensor c = empty(x.shape(), {.dtype = compute_dtype<T>});
  cpu_backend().copy(x, c);
  return c;
}

// A tensor of x's shape in the compute dtype to write results into: x itself when it is
// contiguous of that dtype (or undefined), else a scratch one that finish() copies into x.
template <class T>
Tensor result_buffer(const Tensor& x) {
  if (!x.defined() || (x.dtype() == compute_dtype<T> && x.is_contiguous())) return x;
  return empty(x.shape(), {.dtype = compute_dtype<T>});
}
void finish(const Tensor& buffer, const Tensor& x) {
  if (x.defined() && !buffer.same(x)) cpu_backend().copy(buffer, x);
}

template <class T>
T* data(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

template <class T>
void attention_typed(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                     const Tensor& out, const Tensor& lse) {
  const int64_t B = q.size(0), Lq = q.size(1), D = q.size(2), Lk = k.size(1), Dv = v.size(2);
  const Tensor qp = packed<T>(q), kp = packed<T>(k), vp = packed<T>(v);
  const Tensor o = result_buffer<T>(out);
  const T *Qb = data<T>(qp), *Kb = data<T>(kp), *Vb = data<T>(vp);
  T *Ob = data<T>(o), *lse_b = data<T>(lse);
  const T s = T(scale);
  const int64_t blocks = (Lq + kBq - 1) / kBq;
  blas::OneThread one;
  parallel_for(B * blocks, kBq * Lk * (D + Dv), [&](int64_t item) {
    const int64_t b = item / blocks, r0 = (item % blocks) * kBq;
    const int64_t rows = std::min(kBq, Lq - r0);
    const T* Q = Qb + (b * Lq + r0) * D;
    const T* K = Kb + b * Lk * D;
    const T* V = Vb + b * Lk * Dv;
    T* O = Ob + (b * Lq + r0) * Dv;
    std::vector<T> S(size_t(rows * std::min(kBk, Lk)));
    std::vector<T> m(size_t(rows), -std::numeric_limits<T>::infinity()), l(size_t(rows), T(0));
    std::fill(O, O + rows * Dv, T(0));
    for (int64_t c0 = 0; c0 < Lk; c0 += kBk) {
      const int64_t cols = std::min(kBk, Lk - c0);
      gemm<T>(false, true, rows, cols, D, s, Q, D, K + c0 * D, D, T(0), S.data(), cols);
      for (int64_t r = 0; r < rows; ++r) {
        T* Sr = S.data() + r * cols;
        T mx = m[r];
        for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, Sr[j]);
        T sum = 0;
        for (int64_t j = 0; j < cols; ++j) {
          Sr[j] = sop::exp(Sr[j] - mx);
          sum += Sr[j];
        }
        const T alpha = sop::exp(m[r] - mx);  // 0 for the first chunk (m = −∞)
        l[r] = l[r] * alpha + sum;
        m[r] = mx;
        if (alpha != T(1))
          for (T *Or = O + r * Dv, *end = Or + Dv; Or < end; ++Or) *Or *= alpha;
      }
      gemm<T>(false, false, rows, Dv, cols, T(1), S.data(), cols, V + c0 * Dv, Dv, T(1), O, Dv);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const T inv = T(1) / l[r];
      for (T *Or = O + r * Dv, *end = Or + Dv; Or < end; ++Or) *Or *= inv;
      lse_b[b * Lq + r0 + r] = m[r] + std::log(l[r]);
    }
  });
  finish(o, out);
}

template <class T>
void attention_backward_typed(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, double scale,
                              const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) {
  const int64_t B = q.size(0), Lq = q.size(1), D = q.size(2), Lk = k.size(1), Dv = v.size(2);
  const Tensor qp = packed<T>(q), kp = packed<T>(k), vp = packed<T>(v);
  const Tensor op = packed<T>(out), dop = packed<T>(grad_out);
  const Tensor dq = result_buffer<T>(grad_q), dk = result_buffer<T>(grad_k),
               dv = result_buffer<T>(grad_v);
  const T *Qb = data<T>(qp), *Kb = data<T>(kp), *Vb = data<T>(vp), *Ob = data<T>(op),
          *dOb = data<T>(dop), *lse_b = data<T>(lse);
  T *dQb = data<T>(dq), *dKb = data<T>(dk), *dVb = data<T>(dv);
  const T s = T(scale);
  blas::OneThread one;
  parallel_for(B, Lq * Lk * (2 * D + 3 * Dv), [&](int64_t b) {
    const T* K = Kb + b * Lk * D;
    const T* V = Vb + b * Lk * Dv;
    // dK and dV of every chunk collect over the query blocks: scratch when not wanted
    std::vector<T> dk_scratch(dKb ? 0 : size_t(Lk * D)), dv_scratch(dVb ? 0 : size_t(Lk * Dv));
    T* dK = dKb ? dKb + b * Lk * D : dk_scratch.data();
    T* dV = dVb ? dVb + b * Lk * Dv : dv_scratch.data();
    std::fill(dK, dK + Lk * D, T(0));
    std::fill(dV, dV + Lk * Dv, T(0));
    const int64_t cmax = std::min(kBk, Lk);
    std::vector<T> P(size_t(kBq * cmax)), dP(size_t(kBq * cmax)), delta(static_cast<size_t>(kBq));
    for (int64_t r0 = 0; r0 < Lq; r0 += kBq) {
      const int64_t rows = std::min(kBq, Lq - r0);
      const T* Q = Qb + (b * Lq + r0) * D;
      const T* O = Ob + (b * Lq + r0) * Dv;
      const T* dO = dOb + (b * Lq + r0) * Dv;
      const T* lse_r = lse_b + b * Lq + r0;
      T* dQ = dQb ? dQb + (b * Lq + r0) * D : nullptr;
      if (dQ) std::fill(dQ, dQ + rows * D, T(0));
      for (int64_t r = 0; r < rows; ++r) {
        T acc = 0;
        for (int64_t j = 0; j < Dv; ++j) acc += dO[r * Dv + j] * O[r * Dv + j];
        delta[r] = acc;
      }
      for (int64_t c0 = 0; c0 < Lk; c0 += kBk) {
        const int64_t cols = std::min(kBk, Lk - c0);
        gemm<T>(false, true, rows, cols, D, s, Q, D, K + c0 * D, D, T(0), P.data(), cols);
        for (int64_t r = 0; r < rows; ++r)
          for (T *p = P.data() + r * cols, *end = p + cols; p < end; ++p)
            *p = sop::exp(*p - lse_r[r]);
        gemm<T>(true, false, cols, Dv, rows, T(1), P.data(), cols, dO, Dv, T(1), dV + c0 * Dv, Dv);
        gemm<T>(false, true, rows, cols, Dv, T(1), dO, Dv, V + c0 * Dv, Dv, T(0), dP.data(), cols);
        for (int64_t r = 0; r < rows; ++r) {
          const T* p = P.data() + r * cols;
          T* ds = dP.data() + r * cols;
          for (int64_t j = 0; j < cols; ++j) ds[j] = p[j] * (ds[j] - delta[r]);
        }
        if (dQ)
          gemm<T>(false, false, rows, D, cols, s, dP.data(), cols, K + c0 * D, D, T(1), dQ, D);
        if (dKb)
          gemm<T>(true, false, cols, D, rows, s, dP.data(), cols, Q, D, T(1), dK + c0 * D, D);
      }
    }
  });
  finish(dq, grad_q);
  finish(dk, grad_k);
  finish(dv, grad_v);
}

}  // namespace

bool CpuBackend::fused_attention_supports(DType dtype, int64_t, int64_t) const {
  return is_floating(dtype);
}

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                           const Tensor& out, const Tensor& lse) {
  if (q.dtype() == DType::f64)
    attention_typed<double>(q, k, v, scale, out, lse);
  else
    attention_typed<float>(q, k, v, scale, out, lse);
}

void CpuBackend::attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                    double scale, const Tensor& grad_q, const Tensor& grad_k,
                                    const Tensor& grad_v) {
  if (q.dtype() == DType::f64)
    attention_backward_typed<double>(grad_out, q, k, v, out, lse, scale, grad_q, grad_k, grad_v);
  else
    attention_backward_typed<float>(grad_out, q, k, v, out, lse, scale, grad_q, grad_k, grad_v);
}

}  // namespace cm::cpu
