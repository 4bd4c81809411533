// CUDA matrix products through cuBLAS. Row-major C = A·B is computed as the column-major product
// Cᵀ = Bᵀ·Aᵀ, reading each operand in place when it is row- or column-major with a leading
// dimension and its batch dims collapse to one stride (0 for broadcast batches); other layouts are
// copied once. f32 runs in exact f32 unless set_matmul_tf32(true); f16/bf16 inputs accumulate in
// f32; f64 in f64.
#include <cublas_v2.h>

#include <climits>
#include <memory>
#include <mutex>
#include <vector>

#include "tensor/cuda/cuda_backend.h"
#include "tensor/cuda/cuda_common.h"

#define CUBLAS_CHECK(expr)                                                        \
  do {                                                                            \
    cublasStatus_t cm_st_ = (expr);                                               \
    if (cm_st_ != CUBLAS_STATUS_SUCCESS)                                          \
      CM_FAIL("cuBLAS error: ", cublasGetStatusString(cm_st_), " (", #expr, ")"); \
  } while (0)

namespace cm::cuda_impl {
namespace {

cublasHandle_t handle(int dev) {
  static std::mutex mu;
  static std::vector<cublasHandle_t>* handles = new std::vector<cublasHandle_t>();
  std::lock_guard<std::mutex> lock(mu);
  if (handles->size() <= size_t(dev)) handles->resize(size_t(dev) + 1, nullptr);
  cublasHandle_t& h = (*handles)[size_t(dev)];
  if (!h) CUBLAS_CHECK(cublasCreate(&h));
  CUBLAS_CHECK(cublasSetStream(h, stream(dev)));
  return h;
}

// A matrix operand as cuBLAS reads it: transposed or not, leading dim, batch stride.
struct Operand {
  bool ok = false;
  bool trans = false;  // memory holds the matrix column-major (row-major transpose)
  int64_t ld = 0;
  int64_t batch_stride = 0;
};

Operand describe(const Tensor& t) {
  const int64_t nd = t.dim();
  const int64_t rows = t.shape()[size_t(nd - 2)], cols = t.shape()[size_t(nd - 1)];
  const int64_t sr = t.strides()[size_t(nd - 2)], sc = t.strides()[size_t(nd - 1)];
  Operand o;
  if ((sc == 1 || cols == 1) && sr >= std::max<int64_t>(cols, 1))
    o = {true, false, sr, 0};
  else if ((sr == 1 || rows == 1) && sc >= std::max<int64_t>(rows, 1))
    o = {true, true, sc, 0};
  if (!o.ok) return o;
  // batch dims must collapse to one stride
  int64_t expect = -1;
  for (int64_t d = nd - 3; d >= 0; --d) {
    const int64_t size = t.shape()[size_t(d)], st = t.strides()[size_t(d)];
    if (size == 1) continue;
    if (expect < 0) {
      o.batch_stride = st;
      expect = st * size;
    } else if (st == expect || (o.batch_stride == 0 && st == 0)) {
      expect = st * size;
    } else {
      o.ok = false;
    }
  }
  return o;
}

}  // namespace

void CudaBackend::matmul(const Tensor& a0, const Tensor& b0, const Tensor& out) {
  const int dev = out.device().index;
  DeviceGuard g(dev);
  const int64_t nd = out.dim();
  const int64_t M = out.shape()[size_t(nd - 2)], N = out.shape()[size_t(nd - 1)],
                K = a0.shape()[size_t(nd - 1)];
  const int64_t batch = M * N == 0 ? 0 : out.numel() / (M * N);
  if (out.numel() == 0) return;
  if (K == 0) {
    fill(out, 0.0);
    return;
  }
  Tensor a = a0, b = b0;
  Operand oa = describe(a), ob = describe(b);
  if (!oa.ok) {
    a = empty(a0.shape(), {.dtype = a0.dtype(), .device = a0.device()});
    copy(a0, a);
    oa = describe(a);
  }
  if (!ob.ok) {
    b = empty(b0.shape(), {.dtype = b0.dtype(), .device = b0.device()});
    copy(b0, b);
    ob = describe(b);
  }
  CM_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && batch <= INT_MAX && oa.ld <= INT_MAX &&
               ob.ld <= INT_MAX,
           "matmul: sizes exceed cuBLAS's 32-bit limits (M=", M, " N=", N, " K=", K,
           " batch=", batch, ")");

  cudaDataType_t type;
  cublasComputeType_t compute;
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const void* alpha = &one_f;
  const void* beta = &zero_f;
  switch (out.dtype()) {
    case DType::f32:
      type = CUDA_R_32F;
      compute = matmul_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::f64:
      type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      alpha = &one_d;
      beta = &zero_d;
      break;
    case DType::f16:
      type = CUDA_R_16F;
      compute = CUBLAS_COMPUTE_32F;
      break;
    case DType::bf16:
      type = CUDA_R_16BF;
      compute = CUBLAS_COMPUTE_32F;
      break;
    default:
      CM_FAIL("matmul: dtype ", dtype_name(out.dtype()), " is not supported (floating only)");
  }
  // Cᵀ[N, M] = op(B)[N, K] · op(A)[K, M] in column-major terms
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle(dev), ob.trans ? CUBLAS_OP_T : CUBLAS_OP_N, oa.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
      int(N), int(M), int(K), alpha, b.data_ptr(), type, int(ob.ld), ob.batch_stride, a.data_ptr(),
      type, int(oa.ld), oa.batch_stride, beta, out.data_ptr(), type, int(N), M * N, int(batch),
      compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace cm::cuda_impl
