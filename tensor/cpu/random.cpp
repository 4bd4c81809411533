// CPU random fills: element i is random_element<T>(…, i) (tensor/random.h), the same function the
// CUDA kernel evaluates, so both devices produce the same bits. Built without FP contraction.
//
// The Philox blocks are computed kBatch at a time in structure-of-arrays form (philox_batch: the
// same rounds as philox4x32_10, lane by lane, which the compiler vectorises: 32×32→64 multiplies
// of 4 or 8 counters per instruction), and the kind of draw is a compile-time constant in the loop
// that turns blocks into values; every element keeps its value (tests/test_random.cpp checks
// random_element itself).
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"

namespace cm::cpu {
namespace {

constexpr int kBatch = 64;

// Blocks first, first + 1, ..., first + kBatch − 1 of the stream `seed`, lane k of block i in
// v[k][i].
CM_CPU_CLONES void philox_batch(uint64_t seed, uint64_t first, uint32_t (&v)[4][kBatch]) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int i = 0; i < kBatch; ++i) {
    const uint64_t blk = first + uint64_t(i);
    v[0][i] = uint32_t(blk);
    v[1][i] = uint32_t(blk >> 32);
    v[2][i] = 0;
    v[3][i] = 0;
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    for (int i = 0; i < kBatch; ++i) {
      const uint64_t p0 = uint64_t(M0) * v[0][i], p1 = uint64_t(M1) * v[2][i];
      const uint32_t n0 = uint32_t(p1 >> 32) ^ v[1][i] ^ k0;
      const uint32_t n2 = uint32_t(p0 >> 32) ^ v[3][i] ^ k1;
      v[1][i] = uint32_t(p1);
      v[3][i] = uint32_t(p0);
      v[0][i] = n0;
      v[2][i] = n2;
    }
    k0 += W0;
    k1 += W1;
  }
}

template <class T, RandomKind K>
void fill_random(T* p, int64_t n, uint64_t seed, uint64_t first_block, double a, double b) {
  constexpr int64_t per = random_per_block<T>();
  const int64_t blocks = (n + per - 1) / per, batches = (blocks + kBatch - 1) / kBatch;
  parallel_for(batches, kBatch * per * 16, [&](int64_t bt) {
    uint32_t v[4][kBatch];
    philox_batch(seed, first_block + uint64_t(bt * kBatch), v);
    const int64_t b0 = bt * kBatch, nb = std::min<int64_t>(kBatch, blocks - b0);
    for (int64_t i = 0; i < nb; ++i) {
      const Philox4 r{{v[0][i], v[1][i], v[2][i], v[3][i]}};
      const int64_t e0 = (b0 + i) * per;
      for (int64_t l = 0; l < per && e0 + l < n; ++l)
        p[e0 + l] = random_from_block<T>(K, r, int(l), a, b);
    }
  });
}

// Dropout in one pass over the draw's blocks: m = Bernoulli(keep) rounded to T, times scale in
// T's compute type (MulScalar's arithmetic), and out = x·m (Mul's), so the bits are the
// composite's (Backend::dropout).
template <class T>
void dropout_typed(const T* x, T* out, T* mask, int64_t n, double keep, double scale, uint64_t seed,
                   uint64_t first_block) {
  using C = compute_t<T>;
  constexpr int64_t per = random_per_block<T>();
  const C s = C(scale);
  const int64_t blocks = (n + per - 1) / per, batches = (blocks + kBatch - 1) / kBatch;
  parallel_for(batches, kBatch * per * 16, [&](int64_t bt) {
    uint32_t v[4][kBatch];
    philox_batch(seed, first_block + uint64_t(bt * kBatch), v);
    const int64_t b0 = bt * kBatch, nb = std::min<int64_t>(kBatch, blocks - b0);
    T m[kBatch * per];
    for (int64_t i = 0; i < nb; ++i) {
      const Philox4 r{{v[0][i], v[1][i], v[2][i], v[3][i]}};
      for (int64_t l = 0; l < per; ++l)
        m[i * per + l] = convert<T>(
            static_cast<C>(random_from_block<T>(RandomKind::Bernoulli, r, int(l), keep, 0.0)) * s);
    }
    const int64_t e0 = b0 * per, ne = std::min(nb * per, n - e0);
    for (int64_t e = 0; e < ne; ++e)
      out[e0 + e] = convert<T>(static_cast<C>(x[e0 + e]) * static_cast<C>(m[e]));
    if (mask)
      for (int64_t e = 0; e < ne; ++e) mask[e0 + e] = m[e];
  });
}

}  // namespace

void CpuBackend::dropout(const Tensor& x, double keep, double scale, uint64_t seed,
                         uint64_t first_block, const Tensor& out, const Tensor& mask) {
  // One dense layout for all three (contiguous or channels-last), else the composite.
  const auto dense = [](const Tensor& t) { return t.is_contiguous() || is_channels_last(t); };
  const bool same = dense(x) && out.strides() == x.strides() &&
                    (!mask.defined() || mask.strides() == x.strides()) &&
                    out.dtype() == x.dtype() && (!mask.defined() || mask.dtype() == x.dtype());
  if (!same || !is_floating(x.dtype()))
    return Backend::dropout(x, keep, scale, seed, first_block, out, mask);
  CM_DISPATCH_FLOAT(x.dtype(), "dropout", [&] {
    dropout_typed<scalar_t>(x.data<scalar_t>(), out.data<scalar_t>(),
                            mask.defined() ? mask.data<scalar_t>() : nullptr, x.numel(), keep,
                            scale, seed, first_block);
  });
}

void CpuBackend::random(RandomKind kind, const Tensor& out, uint64_t seed, uint64_t first_block,
                        double a, double b) {
  CM_CHECK(out.is_contiguous() || is_channels_last(out),
           "random: output must be contiguous or channels-last (it is filled in memory order)");
  CM_DISPATCH_ALL(out.dtype(), "random", [&] {
    scalar_t* p = static_cast<scalar_t*>(out.data_ptr());
    const int64_t n = out.numel();
    switch (kind) {
      case RandomKind::Uniform:
        return fill_random<scalar_t, RandomKind::Uniform>(p, n, seed, first_block, a, b);
      case RandomKind::Normal:
        return fill_random<scalar_t, RandomKind::Normal>(p, n, seed, first_block, a, b);
      case RandomKind::Int:
        return fill_random<scalar_t, RandomKind::Int>(p, n, seed, first_block, a, b);
      case RandomKind::Bernoulli:
        return fill_random<scalar_t, RandomKind::Bernoulli>(p, n, seed, first_block, a, b);
    }
  });
}

}  // namespace cm::cpu
