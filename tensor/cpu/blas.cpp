#include "tensor/cpu/blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

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

struct Lib {
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  GetThreadsFn get_threads = nullptr;
  CoreNameFn core_name = nullptr;
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
