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
    constexpr int64_t per = random_per_block<scalar_t>();
    const int64_t n = out.numel(), blocks = (n + per - 1) / per;
    // one Philox block per group of `per` elements (random_element would compute it per element)
    parallel_for(blocks, 64 * per, [&](int64_t blk) {
      const Philox4 r = philox_block(seed, first_block + uint64_t(blk));
      for (int64_t l = 0; l < per && blk * per + l < n; ++l)
        p[blk * per + l] = random_from_block<scalar_t>(kind, r, int(l), a, b);
    });
  });
}

}  // namespace cm::cpu
