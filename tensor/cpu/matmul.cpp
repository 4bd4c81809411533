// CPU batched matrix product: out[..., M, N] = a[..., M, K] · b[..., K, N].
// Large products go to BLAS (sgemm/dgemm) directly on the operands' strides when they are
// row- or column-major with a leading dimension; other layouts are copied once. Many small
// products run in parallel over the batch with a plain i-k-j loop. f16/bf16 compute in f32.
// BLAS runs on one thread inside OpenMP items (products of the batch, and for small batches
// column or row blocks of each product, a split decided by the shapes alone): waking OpenBLAS's
// own thread pool leaves its threads spinning for a while after every call, and on few cores they
// then fight the OpenMP threads of the next kernels (tensor/cpu/conv.cpp does the same).
#include <algorithm>
#include <vector>

#include "tensor/cpu/blas.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"

namespace cm::cpu {
namespace {

// How a matrix [R, C] with strides (sr, sc) is seen by BLAS (row-major): as-is with leading
// dimension sr, or transposed with leading dimension sc. `ok` is false for other layouts.
struct BlasView {
  bool ok = false;
  bool trans = false;
  int64_t ld = 0;
};
BlasView blas_view(int64_t rows, int64_t cols, int64_t sr, int64_t sc) {
  if ((sc == 1 || cols == 1) && sr >= std::max<int64_t>(cols, 1)) return {true, false, sr};
  if ((sr == 1 || rows == 1) && sc >= std::max<int64_t>(rows, 1)) return {true, true, sc};
  if (rows == 1 && cols == 1) return {true, false, 1};
  return {};
}

// Items to aim for when splitting products over threads, and the fewest multiply-adds a block of
// a split product should have.
constexpr int64_t kMinItems = 8;
constexpr int64_t kMinBlockWork = int64_t(1) << 20;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

template <class T>
void gemm_blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda,
               const T* b, int64_t ldb, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    blas::sgemm(ta, tb, M, N, K, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  else
    blas::dgemm(ta, tb, M, N, K, 1.0, a, lda, b, ldb, 0.0, c, ldc);
}

// c[M, N] = a · b with arbitrary strides, accumulating in T.
template <class T>
void gemm_small(int64_t M, int64_t N, int64_t K, const T* a, int64_t sam, int64_t sak, const T* b,
                int64_t sbk, int64_t sbn, T* c) {
  for (int64_t i = 0; i < M; ++i) {
    T* ci = c + i * N;
    for (int64_t j = 0; j < N; ++j) ci[j] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T aik = a[i * sam + k * sak];
      const T* bk = b + k * sbk;
      if (sbn == 1)
        for (int64_t j = 0; j < N; ++j) ci[j] += aik * bk[j];
      else
        for (int64_t j = 0; j < N; ++j) ci[j] += aik * bk[j * sbn];
    }
  }
}

template <class T>
void matmul_typed(const Tensor& a, const Tensor& b, const Tensor& out) {
  const int64_t nd = out.dim();
  const int64_t M = out.shape()[nd - 2], N = out.shape()[nd - 1], K = a.shape()[nd - 1];
  const int64_t batch = out.numel() / std::max<int64_t>(M * N, 1);
  T* cp = static_cast<T*>(out.data_ptr());
  if (out.numel() == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < out.numel(); ++i) cp[i] = T(0);
    return;
  }
  // Batch offsets of a and b for batch index i (out is contiguous).
  auto batch_offsets = [&](int64_t i, int64_t* ao, int64_t* bo) {
    int64_t oa = 0, ob = 0;
    for (int64_t d = nd - 3; d >= 0; --d) {
      int64_t q = i % out.shape()[d];
      i /= out.shape()[d];
      oa += q * a.strides()[d];
      ob += q * b.strides()[d];
    }
    *ao = oa;
    *bo = ob;
  };
  const T* ap = static_cast<const T*>(a.data_ptr());
  const T* bp = static_cast<const T*>(b.data_ptr());
  const int64_t sam = a.strides()[nd - 2], sak = a.strides()[nd - 1];
  const int64_t sbk = b.strides()[nd - 2], sbn = b.strides()[nd - 1];
  const bool large = M * N * K >= 48 * 48 * 48;
  if (!large) {
    parallel_for(batch, M * N * K, [&](int64_t i) {
      int64_t ao, bo;
      batch_offsets(i, &ao, &bo);
      gemm_small<T>(M, N, K, ap + ao, sam, sak, bp + bo, sbk, sbn, cp + i * M * N);
    });
    return;
  }
  BlasView va = blas_view(M, K, sam, sak), vb = blas_view(K, N, sbk, sbn);
  Tensor ac = a, bc = b;  // contiguous copies when BLAS cannot read the layout
  if (!va.ok) {
    ac = empty(a.shape(), {.dtype = a.dtype()});
    cpu_backend().copy(a, ac);
    va = {true, false, K};
  }
  if (!vb.ok) {
    bc = empty(b.shape(), {.dtype = b.dtype()});
    cpu_backend().copy(b, bc);
    vb = {true, false, N};
  }
  const T* ap2 = static_cast<const T*>(ac.data_ptr());
  const T* bp2 = static_cast<const T*>(bc.data_ptr());
  // Items: (batch index, block). A batch too small to keep a few threads busy splits each
  // product into blocks of output columns (or rows, whichever dim is longer), at least 64 wide.
  const bool by_cols = N >= M;
  const int64_t len = by_cols ? N : M;
  const int64_t blocks =
      batch >= kMinItems
          ? 1
          : std::clamp<int64_t>(std::min(ceil_div(kMinItems, batch), M * N * K / kMinBlockWork), 1,
                                std::max<int64_t>(len / 64, 1));
  blas::OneThread one;
  parallel_for(batch * blocks, M * N * K / blocks, [&](int64_t t) {
    const int64_t i = t / blocks, k = t % blocks;
    int64_t ao = 0, bo = 0, i2 = i;
    for (int64_t d = nd - 3; d >= 0; --d) {
      int64_t q = i2 % out.shape()[d];
      i2 /= out.shape()[d];
      ao += q * ac.strides()[d];
      bo += q * bc.strides()[d];
    }
    const int64_t lo = k * len / blocks, hi = (k + 1) * len / blocks;
    T* c = cp + i * M * N;
    if (by_cols)  // c[:, lo:hi] = a · b[:, lo:hi]
      gemm_blas<T>(va.trans, vb.trans, M, hi - lo, K, ap2 + ao, va.ld,
                   bp2 + bo + lo * (vb.trans ? vb.ld : 1), vb.ld, c + lo, N);
    else  // c[lo:hi, :] = a[lo:hi, :] · b
      gemm_blas<T>(va.trans, vb.trans, hi - lo, N, K, ap2 + ao + lo * (va.trans ? 1 : va.ld), va.ld,
                   bp2 + bo, vb.ld, c + lo * N, N);
  });
}

}  // namespace

void CpuBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (out.dtype()) {
    case DType::f32:
      matmul_typed<float>(a, b, out);
      return;
    case DType::f64:
      matmul_typed<double>(a, b, out);
      return;
    case DType::f16:
    case DType::bf16: {
      // compute in f32, round once on the way out
      Tensor a32 = empty(a.shape()), b32 = empty(b.shape()), o32 = empty(out.shape());
      copy(a, a32);
      copy(b, b32);
      matmul_typed<float>(a32, b32, o32);
      copy(o32, out);
      return;
    }
    default:
      CM_FAIL("matmul: dtype ", dtype_name(out.dtype()), " is not supported (floating only)");
  }
}

}  // namespace cm::cpu
