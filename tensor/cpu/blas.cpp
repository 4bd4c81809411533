#include "tensor/cpu/blas.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace cm::cpu::blas {
namespace {

// cblas's enums (CBLAS_ORDER, CBLAS_TRANSPOSE) as the ABI passes them.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*,
                         int, double, double*, int);
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();
using CoreNameFn = char* (*)();
// LAPACK's Fortran dsyevd_ (gfortran ABI: arguments by pointer, then the hidden lengths of the two
// character arguments).
using DsyevdFn = void (*)(const char* jobz, const char* uplo, const int* n, double* a,
                          const int* lda, double* w, double* work, const int* lwork, int* iwork,
                          const int* liwork, int* info, size_t jobz_len, size_t uplo_len);
using DgesddFn = void (*)(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                          double* s, double* u, const int* ldu, double* vt, const int* ldvt,
                          double* work, const int* lwork, int* iwork, int* info, size_t jobz_len);

struct Lib {
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  GetThreadsFn get_threads = nullptr;
  CoreNameFn core_name = nullptr;
  DsyevdFn dsyevd = nullptr;  // these two are null in an OpenBLAS built without LAPACK
  DgesddFn dgesdd = nullptr;
};

const Lib& lib() {
  static Lib l;
  static std::once_flag once;
  std::call_once(once, [] {
    if (!std::getenv("OPENBLAS_CORETYPE")) {
      __builtin_cpu_init();
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
      else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        setenv("OPENBLAS_CORETYPE", "Haswell", 0);
    }
    void* h = nullptr;
    for (const char* name : {"libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0"}) {
      h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (h) break;
    }
    CM_CHECK(h != nullptr, "matmul: OpenBLAS could not be loaded (", dlerror(),
             "); install it with apt-get install libopenblas0");
    l.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    l.dgemm = reinterpret_cast<DgemmFn>(dlsym(h, "cblas_dgemm"));
    l.set_threads = reinterpret_cast<SetThreadsFn>(dlsym(h, "openblas_set_num_threads"));
    l.get_threads = reinterpret_cast<GetThreadsFn>(dlsym(h, "openblas_get_num_threads"));
    l.core_name = reinterpret_cast<CoreNameFn>(dlsym(h, "openblas_get_corename"));
    l.dsyevd = reinterpret_cast<DsyevdFn>(dlsym(h, "dsyevd_"));
    l.dgesdd = reinterpret_cast<DgesddFn>(dlsym(h, "dgesdd_"));
    CM_CHECK(l.sgemm && l.dgemm && l.set_threads && l.get_threads,
             "matmul: the loaded OpenBLAS lacks cblas_sgemm, ",
             "cblas_dgemm or openblas_set_num_threads");
  });
  return l;
}

int as_int(int64_t v, const char* what) {
  CM_CHECK(v >= 0 && v <= INT32_MAX, "matmul: ", what, " = ", v, " exceeds BLAS's 32-bit limit");
  return int(v);
}

}  // namespace

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  lib().sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, as_int(M, "M"),
              as_int(N, "N"), as_int(K, "K"), alpha, A, as_int(lda, "lda"), B, as_int(ldb, "ldb"),
              beta, C, as_int(ldc, "ldc"));
}

void dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
           int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  lib().dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, as_int(M, "M"),
              as_int(N, "N"), as_int(K, "K"), alpha, A, as_int(lda, "lda"), B, as_int(ldb, "ldb"),
              beta, C, as_int(ldc, "ldc"));
}

namespace {
void check_lapack(bool found, const char* routine, const char* op) {
  CM_CHECK(found, op, ": the loaded OpenBLAS has no LAPACK (", routine,
           "); install Debian's libopenblas0, which ships it");
}
void check_lapack_size(int64_t m, int64_t n, const char* op) {
  CM_CHECK(m >= 0 && n >= 0 && m <= 32000 && n <= 32000, op, ": a ", m, "×", n,
           " matrix exceeds LAPACK's 32-bit workspace sizes (≤ 32000 rows and columns)");
}
}  // namespace

void dsyevd(bool vectors, int64_t n64, double* a, double* w, const char* op) {
  const Lib& l = lib();
  check_lapack(l.dsyevd != nullptr, "dsyevd_", op);
  check_lapack_size(n64, n64, op);
  if (n64 == 0) return;
  const int n = int(n64);
  const char jobz = vectors ? 'V' : 'N', uplo = 'L';
  // A workspace query (lwork = liwork = −1), then the decomposition.
  int info = 0, lwork = -1, liwork = -1, iwork_size = 0;
  double work_size = 0;
  l.dsyevd(&jobz, &uplo, &n, a, &n, w, &work_size, &lwork, &iwork_size, &liwork, &info, 1, 1);
  CM_CHECK(info == 0, op, ": LAPACK dsyevd's workspace query failed (info ", info, ")");
  lwork = int(work_size);
  liwork = iwork_size;
  std::vector<double> work(static_cast<size_t>(std::max(lwork, 1)));
  std::vector<int> iwork(static_cast<size_t>(std::max(liwork, 1)));
  l.dsyevd(&jobz, &uplo, &n, a, &n, w, work.data(), &lwork, iwork.data(), &liwork, &info, 1, 1);
  CM_CHECK(info == 0, op, ": LAPACK dsyevd ",
           info < 0 ? "rejected argument " + std::to_string(-info)
                    : "did not converge (" + std::to_string(info) + " off-diagonal elements)",
           " for a ", n, "×", n, " matrix");
}

void dgesdd(int64_t m64, int64_t n64, double* a, double* s, const char* op) {
  const Lib& l = lib();
  check_lapack(l.dgesdd != nullptr, "dgesdd_", op);
  check_lapack_size(m64, n64, op);
  if (m64 == 0 || n64 == 0) return;
  // The row-major a is the column-major aᵀ [n, m], which has the same singular values.
  const int m = int(n64), n = int(m64), one = 1;
  const char jobz = 'N';
  int info = 0, lwork = -1;
  double work_size = 0, unused = 0;
  std::vector<int> iwork(static_cast<size_t>(8 * std::min(m, n)));
  l.dgesdd(&jobz, &m, &n, a, &m, s, &unused, &one, &unused, &one, &work_size, &lwork, iwork.data(),
           &info, 1);
  CM_CHECK(info == 0, op, ": LAPACK dgesdd's workspace query failed (info ", info, ")");
  lwork = int(work_size);
  std::vector<double> work(static_cast<size_t>(std::max(lwork, 1)));
  l.dgesdd(&jobz, &m, &n, a, &m, s, &unused, &one, &unused, &one, work.data(), &lwork, iwork.data(),
           &info, 1);
  CM_CHECK(
      info == 0, op, ": LAPACK dgesdd ",
      info < 0 ? "rejected argument " + std::to_string(-info) : std::string("did not converge"),
      " for a ", m64, "×", n64, " matrix");
}

int num_threads() {
  return lib().get_threads();
}
void set_num_threads(int n) {
  lib().set_threads(n);
}
std::string core_name() {
  return lib().core_name ? lib().core_name() : "unknown";
}

OneThread::OneThread() : prev_(num_threads()) {
  if (prev_ != 1) set_num_threads(1);
}
OneThread::~OneThread() {
  if (prev_ != 1) set_num_threads(prev_);
}

}  // namespace cm::cpu::blas
