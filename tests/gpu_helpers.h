// Shared by the GPU suites (tests/test_cuda*.cpp): the skip rule, the device, and the CUDA-vs-CPU
// comparison.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/helpers.h"

namespace cm::test {

// Ends the test case's process with CTest's "skipped" code (77) where no GPU is present.
inline void require_gpu() {
  if (!cuda::is_available()) {
    MESSAGE("no CUDA device: skipped");
    std::fflush(stdout);
    std::_Exit(77);
  }
}

inline const Device kGpu = Device::cuda(0);

// Tolerance of a comparison between devices, by dtype (relative to the largest reference value).
inline double device_tol(DType t) {
  switch (t) {
    case DType::f64:
      return 1e-10;
    case DType::f32:
      return 2e-5;
    case DType::f16:
      return 2e-2;
    case DType::bf16:
      return 5e-2;
    default:
      return 0;
  }
}

// max |a − b| ≤ rtol · max |a| (NaNs must match), a the CPU reference, b on any device and dtype.
inline void check_close(const Tensor& a, const Tensor& b, double rtol, const std::string& what) {
  REQUIRE_MESSAGE(b.defined(), what, ": missing");
  REQUIRE_MESSAGE(a.shape() == b.shape(), what, ": shapes ", shape_str(a.shape()), " vs ",
                  shape_str(b.shape()));
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double scale = 1e-3;
  for (double v : x)
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if ((std::isnan(x[i]) && std::isnan(y[i])) || x[i] == y[i]) continue;
    const double e = std::fabs(x[i] - y[i]) / scale;
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  CHECK_MESSAGE(worst <= rtol, what, ": max relative difference ", worst, " at element ", at,
                " (cpu ", x.empty() ? 0 : x[at], ", gpu ", y.empty() ? 0 : y[at], ")");
}

}  // namespace cm::test
