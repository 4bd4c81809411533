// CPU random fills: element i is random_element<T>(…, i) (tensor/random.h), the same function the
// CUDA kernel evaluates, so both devices produce the same bits. Built without FP contraction.
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"

namespace cm::cpu {

void CpuBackend::random(RandomKind kind, const Tensor& out, uint64_t seed, uint64_t first_block,
                        double a, double b) {
  CM_CHECK(out.is_contiguous(), "random: output must be contiguous");
  CM_DISPATCH_ALL(out.dtype(), "random", [&] {
    scalar_t* p = static_cast<scalar_t*>(out.data_ptr());
    parallel_for(out.numel(), 64, [&](int64_t i) {
      p[i] = random_element<scalar_t>(kind, seed, first_block, i, a, b);
    });
  });
}

}  // namespace cm::cpu
