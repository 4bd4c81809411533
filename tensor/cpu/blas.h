// The CPU backend's matrix products and the two LAPACK routines evaluation needs (a symmetric
// eigensolver, singular values): OpenBLAS (and the LAPACK inside it), loaded at first use.
//
// OpenBLAS picks its kernels when it is loaded, from the CPU it recognises; the OpenBLAS of
// Debian 12 (0.3.21) does not recognise recent Xeons and falls back to its slowest (Prescott, SSE3)
// kernels, 3–5× slower on small products. cm therefore loads the library itself (dlopen) after
// choosing the kernels for the CPU it runs on: SkylakeX where AVX-512 is present, Haswell with
// AVX2 and FMA, OpenBLAS's own choice otherwise — unless OPENBLAS_CORETYPE is already set, which
// always wins. cm does not link OpenBLAS at build time for the same reason.
#pragma once

#include <cstdint>
#include <string>

namespace cm::cpu::blas {

// C[M, N] = alpha·op(A)·op(B) + beta·C, row-major, with leading dimensions (as cblas_?gemm).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void dgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
           const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
           int64_t ldc);

// The eigenvalues (ascending) and, when `vectors`, the eigenvectors of the symmetric n×n matrix
// a[n·n] (row-major; LAPACK's dsyevd, from OpenBLAS, which ships LAPACK). w[n] receives the
// eigenvalues; with vectors, row i of a then holds the unit eigenvector of w[i], otherwise a is
// overwritten. Only the upper triangle of the row-major a is read (LAPACK's lower triangle of the
// column-major matrix). Errors name `op`: an OpenBLAS without LAPACK, a size beyond LAPACK's
// 32-bit workspaces, or no convergence.
void dsyevd(bool vectors, int64_t n, double* a, double* w, const char* op);
// The singular values (descending) of a[m·n] (row-major; LAPACK's dgesdd without vectors) into
// s[min(m, n)]; a is overwritten. Errors as dsyevd's.
void dgesdd(int64_t m, int64_t n, double* a, double* s, const char* op);

int num_threads();
void set_num_threads(int n);
// The kernel family OpenBLAS uses ("SkylakeX", "Haswell", ...).
std::string core_name();

// Holds OpenBLAS to one thread for a scope, so that products issued from OpenMP threads do not
// wake OpenBLAS's own thread pool (on few cores the two pools fight for them).
class OneThread {
 public:
  OneThread();
  ~OneThread();
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  int prev_;
};

}  // namespace cm::cpu::blas
