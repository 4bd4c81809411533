// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11). A draw is a pure function of (seed, counter), so every device draws the same
// numbers for the same seed and offset, and any element can be drawn without drawing the ones
// before it.
//
// Layout of a draw of n values into a contiguous tensor from generator state (seed, offset):
//   block b = offset + i / 4 for element i (i / 2 for 64-bit types), lane i % 4 (or lanes 2·(i%2),
//   2·(i%2)+1); the block is Philox(key = seed (lo, hi), counter = (b lo, b hi, 0, 0)).
//   Normals come from the Box–Muller transform of lane pairs (0,1) and (2,3): cos for the first of
//   a pair, sin for the second. The generator's offset then advances by the number of blocks used.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tensor/dtype.h"

namespace cm {

struct Philox4 {
  uint32_t v[4];
};

CM_HD inline uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

// Philox4x32 with 10 rounds.
CM_HD inline Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = philox_mulhilo(M0, ctr.v[0], &hi0);
    uint32_t lo1 = philox_mulhilo(M1, ctr.v[2], &hi1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

// The block for a given seed and block index.
CM_HD inline Philox4 philox_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(Philox4{{uint32_t(block), uint32_t(block >> 32), 0u, 0u}}, uint32_t(seed),
                       uint32_t(seed >> 32));
}

// Uniform in (0, 1]: never 0, so log() in Box–Muller is finite. 24 bits for float.
CM_HD inline float uniform_f32(uint32_t x) {
  return float((x >> 8) + 1u) * (1.0f / 16777216.0f);
}
// Uniform in (0, 1] with 53 bits from two lanes.
CM_HD inline double uniform_f64(uint32_t lo, uint32_t hi) {
  uint64_t x = (uint64_t(hi) << 32) | lo;
  return double((x >> 11) + 1u) * (1.0 / 9007199254740992.0);
}

// [0, 1) from 24 random bits (float) or 53 random bits (double), for uniform draws.
CM_HD inline float unit_f32(uint32_t x) {
  return float(x >> 8) * (1.0f / 16777216.0f);
}
CM_HD inline double unit_f64(uint32_t lo, uint32_t hi) {
  return double(((uint64_t(hi) << 32) | lo) >> 11) * (1.0 / 9007199254740992.0);
}

// ---- Box–Muller with bit-identical results on every device
// ---------------------------------------- log and sin/cos are evaluated here from IEEE-rounded +,
// ×, ÷ only (on CUDA through the _rn intrinsics, which the compiler never fuses into FMAs; the host
// file is built without FP contraction), so the normals are the same bits on the CPU and the GPU.
// Accuracy is about 1e-16.
namespace rng_detail {
CM_HD inline double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
CM_HD inline double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
CM_HD inline double div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// ln(u) for u in (0, 1]: u = m·2^e with m in [√½, √2), ln m = 2·atanh(s), s = (m − 1)/(m + 1).
CM_HD inline double log_unit(double u) {
  uint64_t bits;
  memcpy(&bits, &u, 8);
  int64_t e = int64_t((bits >> 52) & 0x7ff) - 1023;
  bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;  // m in [1, 2)
  double m;
  memcpy(&m, &bits, 8);
  if (m > 1.4142135623730951) {
    m = mul(m, 0.5);
    e += 1;
  }
  const double s = div(add(m, -1.0), add(m, 1.0));
  const double s2 = mul(s, s);
  double poly = 1.0 / 25;  // Σ s^(2k) / (2k + 1), k = 0..12, Horner from the top
  for (int k = 11; k >= 0; --k) poly = add(mul(poly, s2), div(1.0, double(2 * k + 1)));
  const double ln_m = mul(mul(2.0, s), poly);
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  return add(add(mul(double(e), ln2_hi), ln_m), mul(double(e), ln2_lo));
}

// sin and cos of 2π·t for t in [0, 1): t = k/4 + r with |r| ≤ 1/8 (exact), then Taylor series
// of φ = 2π·r on [−π/4, π/4] and a rotation by k quarter turns.
CM_HD inline void sincos_turns(double t, double* sn, double* cs) {
  const double k = double(int64_t(add(mul(t, 4.0), 0.5)));  // nearest quarter turn (t ≥ 0)
  const double r = add(t, mul(k, -0.25));
  const double phi = mul(r, 6.283185307179586476925);
  const double p2 = mul(phi, phi);
  double s = 0, c = 0, term_s = phi, term_c = 1.0;
  for (int n = 0; n < 11; ++n) {
    s = add(s, term_s);
    c = add(c, term_c);
    term_s = div(mul(term_s, -p2), double((2 * n + 2) * (2 * n + 3)));
    term_c = div(mul(term_c, -p2), double((2 * n + 1) * (2 * n + 2)));
  }
  switch (int64_t(k) & 3) {
    case 0:
      *sn = s;
      *cs = c;
      break;
    case 1:
      *sn = c;
      *cs = -s;
      break;
    case 2:
      *sn = -s;
      *cs = -c;
      break;
    default:
      *sn = -c;
      *cs = s;
      break;
  }
}

// One pair of standard normals from two uniforms: u1 in (0, 1], u2 in [0, 1).
CM_HD inline void box_muller(double u1, double u2, double* n0, double* n1) {
  const double lg = log_unit(u1);
  const double r = sqrt(mul(-2.0, lg));  // correctly rounded on both devices
  double sn, cs;
  sincos_turns(u2, &sn, &cs);
  *n0 = mul(r, cs);
  *n1 = mul(r, sn);
}
}  // namespace rng_detail

// What a random fill draws.
enum class RandomKind : uint8_t {
  Uniform,   // [a, b): a + (b - a)·u with u in [0, 1)
  Normal,    // mean a, standard deviation b
  Int,       // integers in [a, b) (multiply-shift of 32 random bits, or 64 for ranges over 2^32)
  Bernoulli  // 1 with probability a, else 0
};

// Generator state: a seed and a block offset. Draws advance the offset.
//
// Batch shards (data-parallel training): with set_shard(index, count), a draw of shape [b, ...]
// is rows [index·b, (index + 1)·b) of the draw of shape [count·b, ...] from the same state, and
// the offset advances as by that whole draw. count processes that each draw their shard of every
// batch-leading draw (the loss's noise and indices, the dropout masks) so see the numbers one
// process drawing the whole batch would, and their generators stay in the same state.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  // Reserves the blocks for n values of the given dtype and returns the first block index.
  uint64_t reserve(int64_t n, DType dtype);
  // Values of `dtype` drawn from one block: 2 for 64-bit types (two lanes each), else 4.
  static int64_t values_per_block(DType dtype) { return dtype_size(dtype) == 8 ? 2 : 4; }

  void set_shard(int64_t index, int64_t count);  // 0 ≤ index < count; (0, 1): no sharding
  int64_t shard_index() const { return shard_index_; }
  int64_t shard_count() const { return shard_count_; }

 private:
  uint64_t seed_;
  uint64_t offset_;
  int64_t shard_index_ = 0, shard_count_ = 1;
};

// Sets a generator's batch shard for a scope and restores the previous one after it.
class ShardGuard {
 public:
  ShardGuard(Generator& g, int64_t index, int64_t count)
      : g_(g), index_(g.shard_index()), count_(g.shard_count()) {
    g_.set_shard(index, count);
  }
  ~ShardGuard() { g_.set_shard(index_, count_); }
  ShardGuard(const ShardGuard&) = delete;
  ShardGuard& operator=(const ShardGuard&) = delete;

 private:
  Generator& g_;
  int64_t index_, count_;
};

// The process-wide default generator (used when an op is given none).
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace cm

namespace cm {

// The value of element i of a random fill (see the layout at the top of this file). T is the
// storage type; `first_block` the generator offset reserved for the fill.
// Values per Philox block for storage type T: 2 for 64-bit types (two lanes each), else 4.
template <class T>
CM_HD constexpr int64_t random_per_block() {
  return sizeof(T) == 8 ? 2 : 4;
}

// The value of the element at `lane` of block r (see random_element).
template <class T>
CM_HD inline T random_from_block(RandomKind kind, const Philox4& r, int lane, double a, double b) {
  constexpr bool wide = sizeof(T) == 8;  // f64 and i64 draw from two lanes per value
  switch (kind) {
    case RandomKind::Uniform: {
      // As many random bits as T has significand bits (as PyTorch), so that u is exact in T: 24
      // bits rounded to f16 or bf16 would give 1.0 for u close to 1.
      constexpr int bits = std::is_same_v<T, Half> ? 11 : std::is_same_v<T, BFloat16> ? 8 : 24;
      const double u = wide ? unit_f64(r.v[2 * lane], r.v[2 * lane + 1])
                            : double(r.v[lane] >> (32 - bits)) * (1.0 / double(1u << bits));
      return convert<T>(rng_detail::add(a, rng_detail::mul(rng_detail::add(b, -a), u)));
    }
    case RandomKind::Normal: {
      double u1, u2;
      if (wide) {
        u1 = uniform_f64(r.v[0], r.v[1]);
        u2 = unit_f64(r.v[2], r.v[3]);
      } else {
        const int p = lane / 2;
        u1 = double(uniform_f32(r.v[2 * p]));
        u2 = double(unit_f32(r.v[2 * p + 1]));
      }
      double n0, n1;
      rng_detail::box_muller(u1, u2, &n0, &n1);
      const double n = ((wide ? lane : lane % 2) == 0) ? n0 : n1;
      return convert<T>(rng_detail::add(a, rng_detail::mul(b, n)));
    }
    case RandomKind::Int: {
      const uint64_t range = uint64_t(int64_t(b) - int64_t(a));
      uint64_t off;
      if (wide) {
        const uint64_t x = (uint64_t(r.v[2 * lane + 1]) << 32) | r.v[2 * lane];
#if defined(__CUDA_ARCH__)
        off = __umul64hi(x, range);
#else
        off = uint64_t((unsigned __int128)x * range >> 64);
#endif
      } else {
        off = (uint64_t(r.v[lane]) * range) >> 32;
      }
      return convert<T>(int64_t(a) + int64_t(off));
    }
    case RandomKind::Bernoulli: {
      const double u =
          wide ? unit_f64(r.v[2 * lane], r.v[2 * lane + 1]) : double(unit_f32(r.v[lane]));
      return convert<T>(u < a ? 1 : 0);
    }
  }
  return T{};
}

template <class T>
CM_HD inline T random_element(RandomKind kind, uint64_t seed, uint64_t first_block, int64_t i,
                              double a, double b) {
  constexpr int64_t per_block = random_per_block<T>();
  return random_from_block<T>(kind, philox_block(seed, first_block + uint64_t(i / per_block)),
                              int(i % per_block), a, b);
}

}  // namespace cm
