// cm_bench_ops in a build without CUDA: no GPU cases.
#include "bench/bench.h"

bool bench_cuda(const BenchArgs&) {
  return false;
}
