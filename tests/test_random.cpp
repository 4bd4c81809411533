// Random numbers (tensor/random.h, rand/randn/randint/bernoulli in autograd/ops.h): Philox4x32-10
// known-answer vectors, the documented element→(block, lane) layout recomputed by hand, generator
// offsets and reproducibility, distribution statistics, and the deterministic log/sincos helpers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;

namespace {

constexpr double kTwo24 = 16777216.0;
constexpr double kTwo53 = 9007199254740992.0;
const long double kPiL = 3.141592653589793238462643383279502884L;

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}
double var_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return s / double(v.size() - 1);
}

// The standard normal from two uniforms by the textbook Box–Muller transform, in long double.
double box_muller_ref(double u1, double u2, bool second) {
  const long double r = std::sqrt(-2.0L * std::log((long double)u1));
  const long double a = 2.0L * kPiL * (long double)u2;
  return double(second ? r * std::sin(a) : r * std::cos(a));
}

// Kolmogorov–Smirnov statistic of samples against the standard normal CDF.
double ks_normal(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const double n = double(v.size());
  double d = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double cdf = 0.5 * std::erfc(-v[i] / std::sqrt(2.0));
    d = std::max({d, std::fabs(double(i + 1) / n - cdf), std::fabs(cdf - double(i) / n)});
  }
  return d;
}

}  // namespace

TEST_SUITE("tensor") {
  TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
    {
      const Philox4 r = philox4x32_10(Philox4{{0u, 0u, 0u, 0u}}, 0u, 0u);
      CHECK(r.v[0] == 0x6627e8d5u);
      CHECK(r.v[1] == 0xe169c58du);
      CHECK(r.v[2] == 0xbc57ac4cu);
      CHECK(r.v[3] == 0x9b00dbd8u);
    }
    {
      const Philox4 r = philox4x32_10(Philox4{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
                                      0xffffffffu, 0xffffffffu);
      CHECK(r.v[0] == 0x408f276du);
      CHECK(r.v[1] == 0x41c83b0eu);
      CHECK(r.v[2] == 0xa20bc7c6u);
      CHECK(r.v[3] == 0x6d5451fdu);
    }
    {
      const Philox4 r = philox4x32_10(Philox4{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                      0xa4093822u, 0x299f31d0u);
      CHECK(r.v[0] == 0xd16cfe09u);
      CHECK(r.v[1] == 0x94fdccebu);
      CHECK(r.v[2] == 0x5001e420u);
      CHECK(r.v[3] == 0x24126ea1u);
    }
    // philox_block: key = seed (lo, hi), counter = (block lo, block hi, 0, 0)
    const uint64_t seed = 0xa4093822'299f31d0ull, block = 0x85a308d3'243f6a88ull;
    const Philox4 a = philox_block(seed, block);
    const Philox4 b =
        philox4x32_10(Philox4{{0x243f6a88u, 0x85a308d3u, 0u, 0u}}, 0x299f31d0u, 0xa4093822u);
    for (int k = 0; k < 4; ++k) CHECK(a.v[k] == b.v[k]);
  }

  TEST_CASE("the CPU fill's batched Philox gives random_element's value for every element") {
    // Sizes around the fill's batches of 64 blocks (and its parallel chunks), a counter offset
    // whose low 32 bits wrap inside a batch, every kind and lane width.
    const uint64_t seed = 0xfeedface12345678ull, first = 0xffffffe0ull;
    for (int64_t n : {int64_t(1), int64_t(255), int64_t(257), int64_t(64 * 4 * 37 + 3)})
      for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::i64, DType::i32})
        for (RandomKind kind :
             {RandomKind::Uniform, RandomKind::Normal, RandomKind::Int, RandomKind::Bernoulli}) {
          if ((kind == RandomKind::Normal || kind == RandomKind::Uniform) && !is_floating(dt))
            continue;
          const double a = kind == RandomKind::Int ? -7 : kind == RandomKind::Bernoulli ? 0.3 : 0.5;
          const double b = kind == RandomKind::Int ? 1000 : 2.0;
          const Tensor t = empty({n}, {.dtype = dt});
          backend_for(Device::cpu()).random(kind, t, seed, first, a, b);
          const std::vector<double> got = t.to_vector<double>();
          int bad = 0;
          CM_DISPATCH_ALL(dt, "test", [&] {
            for (int64_t i = 0; i < n; ++i) {
              const double want = double(static_cast<compute_t<scalar_t>>(
                  random_element<scalar_t>(kind, seed, first, i, a, b)));
              if (!(got[size_t(i)] == want)) ++bad;
            }
          });
          CHECK_MESSAGE(bad == 0, n, " elements of ", std::string(dtype_name(dt)), " kind ",
                        int(kind), ": ", bad, " differ");
        }
  }

  TEST_CASE("rand follows the documented block/lane layout") {
    SUBCASE("f32: element i from block offset + i/4, lane i%4, 24 bits") {
      const uint64_t seed = 0x123456789abcdef0ull,
                     offset = (uint64_t(1) << 33) + 5;  // high counter bits used
      Generator g(seed, offset);
      const std::vector<float> got = rand({2, 5}, {}, &g).to_vector<float>();
      REQUIRE(got.size() == 10);
      for (int64_t i = 0; i < 10; ++i) {
        const uint32_t x = philox_block(seed, offset + uint64_t(i / 4)).v[i % 4];
        CHECK(got[size_t(i)] == float(double(x >> 8) / kTwo24));
      }
      CHECK(g.offset() == offset + 3);
      CHECK(g.seed() == seed);
    }
    SUBCASE("f64: element i from block offset + i/2, lanes 2(i%2), 2(i%2)+1, 53 bits") {
      Generator g(77, 3);
      const std::vector<double> got = rand({5}, {.dtype = DType::f64}, &g).to_vector<double>();
      for (int64_t i = 0; i < 5; ++i) {
        const Philox4 r = philox_block(77, 3 + uint64_t(i / 2));
        const int l = int(i % 2);
        const uint64_t x = (uint64_t(r.v[2 * l + 1]) << 32) | r.v[2 * l];
        CHECK(got[size_t(i)] == double(x >> 11) / kTwo53);
      }
      CHECK(g.offset() == 3 + 3);
    }
    SUBCASE("16-bit floats: as many bits as the significand (11 for f16, 8 for bf16), exact") {
      Generator g(5, 0), g2(5, 0);
      const std::vector<float> h = rand({9}, {.dtype = DType::f16}, &g).to_vector<float>();
      const std::vector<float> b = rand({9}, {.dtype = DType::bf16}, &g2).to_vector<float>();
      for (int64_t i = 0; i < 9; ++i) {
        const uint32_t x = philox_block(5, uint64_t(i / 4)).v[i % 4];
        CHECK(h[size_t(i)] == float(std::ldexp(double(x >> 21), -11)));
        CHECK(b[size_t(i)] == float(std::ldexp(double(x >> 24), -8)));
      }
      CHECK(g.offset() == 3);
    }
  }

  TEST_CASE("randn follows the documented Box-Muller layout") {
    SUBCASE("f32: lane pairs (0,1) and (2,3), cos for the first, sin for the second") {
      const uint64_t seed = 99, offset = 11;
      Generator g(seed, offset);
      const std::vector<float> got = randn({10}, {}, &g).to_vector<float>();
      for (int64_t i = 0; i < 10; ++i) {
        const Philox4 r = philox_block(seed, offset + uint64_t(i / 4));
        const int p = int(i % 4) / 2;
        const double u1 = double((r.v[2 * p] >> 8) + 1) / kTwo24;  // (0, 1]
        const double u2 = double(r.v[2 * p + 1] >> 8) / kTwo24;    // [0, 1)
        const double want = box_muller_ref(u1, u2, i % 2 == 1);
        CHECK(std::fabs(double(got[size_t(i)]) - want) <= 1e-6 * std::max(1.0, std::fabs(want)));
      }
      CHECK(g.offset() == offset + 3);
    }
    SUBCASE("f64: one block per pair, u1 from lanes 0,1 and u2 from lanes 2,3") {
      const uint64_t seed = 0xfeedfacecafebeefull, offset = 0;
      Generator g(seed, offset);
      const std::vector<double> got = randn({7}, {.dtype = DType::f64}, &g).to_vector<double>();
      for (int64_t i = 0; i < 7; ++i) {
        const Philox4 r = philox_block(seed, offset + uint64_t(i / 2));
        const uint64_t x1 = (uint64_t(r.v[1]) << 32) | r.v[0],
                       x2 = (uint64_t(r.v[3]) << 32) | r.v[2];
        const double u1 = double((x1 >> 11) + 1) / kTwo53, u2 = double(x2 >> 11) / kTwo53;
        const double want = box_muller_ref(u1, u2, i % 2 == 1);
        CHECK(std::fabs(got[size_t(i)] - want) <= 1e-14 * std::max(1.0, std::fabs(want)));
      }
      CHECK(g.offset() == offset + 4);
    }
  }

  TEST_CASE("randint and bernoulli follow the documented layout") {
    SUBCASE("i32: low + (32 random bits · range) >> 32") {
      Generator g(3, 1);
      const std::vector<int32_t> got =
          randint(-5, 1000, {6}, {.dtype = DType::i32}, &g).to_vector<int32_t>();
      for (int64_t i = 0; i < 6; ++i) {
        const uint32_t x = philox_block(3, 1 + uint64_t(i / 4)).v[i % 4];
        CHECK(got[size_t(i)] == -5 + int32_t((uint64_t(x) * 1005u) >> 32));
      }
      CHECK(g.offset() == 1 + 2);
    }
    SUBCASE("i64 with a range over 2^32: 64 random bits, multiply-high") {
      const int64_t low = -(int64_t(1) << 40), high = int64_t(3) << 40;
      const uint64_t range = uint64_t(high - low);
      Generator g(8, 0);
      const std::vector<int64_t> got =
          randint(low, high, {5}, {.dtype = DType::i64}, &g).to_vector<int64_t>();
      for (int64_t i = 0; i < 5; ++i) {
        const Philox4 r = philox_block(8, uint64_t(i / 2));
        const int l = int(i % 2);
        const uint64_t x = (uint64_t(r.v[2 * l + 1]) << 32) | r.v[2 * l];
        const uint64_t off = uint64_t((unsigned __int128)x * range >> 64);
        CHECK(got[size_t(i)] == low + int64_t(off));
      }
      CHECK(g.offset() == 3);
    }
    SUBCASE("bernoulli: 1 where the [0, 1) uniform of the lane is below p") {
      Generator g(21, 2);
      const std::vector<float> got = bernoulli({12}, 0.4, {}, &g).to_vector<float>();
      for (int64_t i = 0; i < 12; ++i) {
        const uint32_t x = philox_block(21, 2 + uint64_t(i / 4)).v[i % 4];
        CHECK(got[size_t(i)] == (double(x >> 8) / kTwo24 < 0.4 ? 1.0f : 0.0f));
      }
      CHECK(g.offset() == 2 + 3);
    }
  }

  TEST_CASE("generator offsets, reproducibility and split draws") {
    SUBCASE("offsets advance by the number of blocks used") {
      Generator g(1, 0);
      rand({10}, {}, &g);
      CHECK(g.offset() == 3);  // ceil(10 / 4)
      rand({8}, {}, &g);
      CHECK(g.offset() == 5);
      randn({7}, {.dtype = DType::f64}, &g);
      CHECK(g.offset() == 9);  // ceil(7 / 2)
      randint(0, 10, {1}, {.dtype = DType::i64}, &g);
      CHECK(g.offset() == 10);
      rand({0}, {}, &g);
      CHECK(g.offset() == 10);
      bernoulli({4, 4}, 0.5, {.dtype = DType::u8}, &g);
      CHECK(g.offset() == 14);  // 16 one-byte values, 4 per block
    }
    SUBCASE("the same seed and offset give the same numbers") {
      Generator a(42, 7), b(42, 7), c(43, 7), d(42, 8);
      const std::vector<float> va = randn({33}, {}, &a).to_vector<float>();
      CHECK(va == randn({33}, {}, &b).to_vector<float>());
      CHECK(va != randn({33}, {}, &c).to_vector<float>());
      CHECK(va != randn({33}, {}, &d).to_vector<float>());
      // the shape does not matter, only the count
      Generator e(42, 7);
      CHECK(va == randn({3, 11}, {}, &e).to_vector<float>());
      // set_state rewinds
      a.set_state(42, 7);
      CHECK(va == randn({33}, {}, &a).to_vector<float>());
    }
    SUBCASE("two draws equal one draw when the first count is a multiple of 4") {
      Generator a(9, 0), b(9, 0);
      const std::vector<float> one = rand({16}, {}, &a).to_vector<float>();
      std::vector<float> two = rand({8}, {}, &b).to_vector<float>();
      const std::vector<float> rest = rand({8}, {}, &b).to_vector<float>();
      two.insert(two.end(), rest.begin(), rest.end());
      CHECK(one == two);
      CHECK(a.offset() == b.offset());
    }
    SUBCASE("after a partial block the next draw starts at the next block") {
      Generator a(9, 0), b(9, 0);
      const std::vector<float> all = rand({18}, {}, &a).to_vector<float>();
      const std::vector<float> first = rand({10}, {}, &b).to_vector<float>();
      const std::vector<float> second = rand({6}, {}, &b).to_vector<float>();
      CHECK(first == std::vector<float>(all.begin(), all.begin() + 10));
      CHECK(second ==
            std::vector<float>(all.begin() + 12, all.begin() + 18));  // lanes 10, 11 unused
    }
    SUBCASE("the default generator") {
      manual_seed(1234);
      CHECK(default_generator().seed() == 1234);
      CHECK(default_generator().offset() == 0);
      const std::vector<float> v = rand({5}).to_vector<float>();
      CHECK(default_generator().offset() == 2);
      Generator g(1234, 0);
      CHECK(v == rand({5}, {}, &g).to_vector<float>());
      manual_seed(1234);
      CHECK(v == rand({5}).to_vector<float>());
    }
    SUBCASE("like-forms and options") {
      Tensor t = zeros({2, 3}, {.dtype = DType::f64});
      Generator g(4, 0);
      Tensor r = rand_like(t, &g), n = randn_like(t, &g);
      CHECK(r.shape() == Shape{2, 3});
      CHECK(r.dtype() == DType::f64);
      CHECK(n.dtype() == DType::f64);
      CHECK(g.offset() == 6);
      Tensor w = randn({3}, {.requires_grad = true}, &g);
      CHECK(w.requires_grad());
      CHECK(w.is_leaf());
    }
  }

  TEST_CASE("uniform statistics") {
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(std::string(dtype_name(dt)));
      Generator g(2024, 0);
      const std::vector<double> v = rand({200000}, {.dtype = dt}, &g).to_vector<double>();
      const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
      CHECK(*lo >= 0.0);
      CHECK(*hi < 1.0);
      CHECK(*lo < 1e-4);
      CHECK(*hi > 1 - 1e-4);
      // standard error of the mean: sqrt(1/12 / n) ≈ 6.5e-4
      CHECK(std::fabs(mean_of(v) - 0.5) < 3e-3);
      CHECK(std::fabs(var_of(v) - 1.0 / 12) < 2e-3);
      // ten equal bins, each n/10 ± 5σ (σ ≈ 134)
      std::vector<int> bins(10, 0);
      for (double x : v) bins[size_t(std::min(9, int(x * 10)))]++;
      for (int b : bins) CHECK(std::abs(b - 20000) < 700);
    }
  }

  TEST_CASE("rand of 16-bit floats stays below 1") {
    for (DType dt : {DType::f16, DType::bf16}) {
      CAPTURE(std::string(dtype_name(dt)));
      Generator g(31, 0);
      const std::vector<double> v = rand({100000}, {.dtype = dt}, &g).to_vector<double>();
      const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
      CHECK(*lo >= 0.0);
      CHECK(*hi < 1.0);
      CHECK(std::fabs(mean_of(v) - 0.5) < 5e-3);
    }
  }

  TEST_CASE("normal statistics and a Kolmogorov-Smirnov check") {
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(std::string(dtype_name(dt)));
      Generator g(7, 0);
      const std::vector<double> v = randn({200000}, {.dtype = dt}, &g).to_vector<double>();
      int bad = 0;
      for (double x : v) bad += !std::isfinite(x);
      CHECK(bad == 0);
      // standard error of the mean ≈ 2.2e-3, of the std ≈ 1.6e-3
      CHECK(std::fabs(mean_of(v)) < 0.011);
      CHECK(std::fabs(std::sqrt(var_of(v)) - 1.0) < 0.008);
      // the 0.1% critical value of D for n = 200000 is 1.95/sqrt(n) ≈ 0.0044
      const double d = ks_normal(v);
      CHECK(d < 0.0044);
      // tails: P(|x| > 3) ≈ 0.0027
      int tail = 0;
      for (double x : v) tail += std::fabs(x) > 3;
      CHECK(std::abs(tail - 540) < 120);
    }
    // a wrong transform would fail the check: uniforms are far from normal
    Generator g(7, 0);
    std::vector<double> u = rand({20000}, {.dtype = DType::f64}, &g).to_vector<double>();
    for (double& x : u) x = (x - 0.5) * std::sqrt(12.0);
    CHECK(ks_normal(u) > 0.02);
  }

  TEST_CASE("randint ranges and counts") {
    for (DType dt : {DType::i32, DType::i64}) {
      CAPTURE(std::string(dtype_name(dt)));
      Generator g(55, 0);
      const std::vector<int64_t> v =
          randint(-3, 7, {100000}, {.dtype = dt}, &g).to_vector<int64_t>();
      std::map<int64_t, int> counts;
      for (int64_t x : v) counts[x]++;
      CHECK(counts.size() == 10);
      CHECK(counts.begin()->first == -3);
      CHECK(counts.rbegin()->first == 6);
      for (auto [value, c] : counts) {
        CAPTURE(value);
        CHECK(std::abs(c - 10000) < 500);  // σ ≈ 95
      }
    }
    SUBCASE("i64 ranges over 2^32") {
      const int64_t low = -(int64_t(1) << 40) + 3, high = (int64_t(5) << 38) + 1;
      const double width = double(high - low);
      Generator g(56, 0);
      const std::vector<int64_t> v =
          randint(low, high, {80000}, {.dtype = DType::i64}, &g).to_vector<int64_t>();
      std::vector<int> bins(8, 0);
      int odd = 0, outside = 0;
      for (int64_t x : v) {
        if (x < low || x >= high) {
          ++outside;
          continue;
        }
        bins[size_t(std::min(7, int(double(x - low) / width * 8)))]++;
        odd += x & 1;
      }
      CHECK(outside == 0);
      for (int b : bins) CHECK(std::abs(b - 10000) < 500);
      CHECK(std::abs(odd - 40000) < 800);  // the low bits are random too
    }
    SUBCASE("the full i32 range and a one-value range") {
      Generator g(57, 0);
      const std::vector<int32_t> v = randint(std::numeric_limits<int32_t>::min(),
                                             int64_t(std::numeric_limits<int32_t>::max()) + 1,
                                             {20000}, {.dtype = DType::i32}, &g)
                                         .to_vector<int32_t>();
      int neg = 0;
      for (int32_t x : v) neg += x < 0;
      CHECK(std::abs(neg - 10000) < 400);
      const std::vector<int64_t> one =
          randint(41, 42, {50}, {.dtype = DType::i64}, &g).to_vector<int64_t>();
      CHECK(one == std::vector<int64_t>(50, 41));
    }
    SUBCASE("errors") {
      CHECK_THROWS_WITH_AS(randint(5, 5, {3}), doctest::Contains("randint: empty range"), Error);
      CHECK_THROWS_AS(randint(6, 5, {3}), Error);
      CHECK_THROWS_WITH_AS(randint(0, int64_t(1) << 33, {3}, {.dtype = DType::i32}),
                           doctest::Contains("dtype i32"), Error);
      // bounds the dtype cannot hold
      CHECK_THROWS_AS(randint(0, int64_t(1) << 32, {3}, {.dtype = DType::i32}), Error);
      CHECK_THROWS_AS(randint(-1, 10, {3}, {.dtype = DType::u8}), Error);
      CHECK_THROWS_AS(randint(0, 257, {3}, {.dtype = DType::u8}), Error);
      CHECK_THROWS_AS(randint(0, (int64_t(1) << 24) + 2, {3}, {.dtype = DType::f32}), Error);
      CHECK(randint(0, 2, {3}, {.dtype = DType::b8}).dtype() == DType::b8);
      CHECK_THROWS_AS(randint(0, 3, {3}, {.dtype = DType::b8}), Error);
      // bounds beyond 2^53 would lose precision in the kernel's double parameters
      const int64_t big = (int64_t(1) << 60) + 1;
      CHECK_THROWS_AS(randint(big, big + 10, {3}), Error);
      CHECK_THROWS_WITH_AS(rand({3}, {.dtype = DType::i32}), doctest::Contains("rand"), Error);
      CHECK_THROWS_WITH_AS(randn({3}, {.dtype = DType::i64}), doctest::Contains("randn"), Error);
    }
  }

  TEST_CASE("bernoulli frequencies") {
    Generator g(66, 0);
    for (double p : {0.3, 0.9}) {
      CAPTURE(p);
      const std::vector<double> v = bernoulli({100000}, p, {}, &g).to_vector<double>();
      int ones = 0, other = 0;
      for (double x : v) {
        ones += x == 1.0;
        other += x != 0.0 && x != 1.0;
      }
      CHECK(other == 0);
      CHECK(std::fabs(ones / 1e5 - p) < 0.008);  // σ ≤ 1.6e-3
    }
    CHECK(bernoulli({1000}, 0.0, {}, &g).to_vector<double>() == std::vector<double>(1000, 0.0));
    CHECK(bernoulli({1000}, 1.0, {}, &g).to_vector<double>() == std::vector<double>(1000, 1.0));
    const std::vector<bool> b = bernoulli({1000}, 0.5, {.dtype = DType::b8}, &g).to_vector<bool>();
    CHECK(std::abs(int(std::count(b.begin(), b.end(), true)) - 500) < 80);
    CHECK_THROWS_WITH_AS(bernoulli({3}, 1.5), doctest::Contains("bernoulli"), Error);
    CHECK_THROWS_AS(bernoulli({3}, -0.1), Error);
  }

  TEST_CASE("rng_detail log and sincos agree with the C library") {
    std::vector<double> us = {1.0,
                              0.5,
                              0.25,
                              0.75,
                              std::nextafter(1.0, 0.0),
                              1.0 / kTwo53,
                              1.0 / kTwo24,
                              0.7071067811865476,
                              0.7071067811865475,
                              1.4142135623730951 / 2,
                              1e-300,
                              0.1};
    Generator g(100, 0);
    for (double u : rand({20000}, {.dtype = DType::f64}, &g).to_vector<double>())
      us.push_back(u > 0 ? u : 1.0);
    for (double u : rand({20000}, {}, &g).to_vector<double>()) us.push_back(u > 0 ? u : 1.0);
    for (int e = 1; e < 60; ++e) us.push_back(1.0 - std::ldexp(1.0, -e));  // ln u near 0
    double worst_log = 0;
    for (double u : us) {
      const double ref = double(std::log((long double)u));
      const double got = rng_detail::log_unit(u);
      const double err = std::fabs(got - ref) / std::max(std::fabs(ref), 1e-300);
      worst_log = std::max(worst_log, ref == 0 ? std::fabs(got) : err);
    }
    CHECK(rng_detail::log_unit(1.0) == 0.0);
    CHECK(worst_log < 1e-15);

    std::vector<double> ts = {
        0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, std::nextafter(1.0, 0.0), 1e-20};
    for (double t : rand({20000}, {.dtype = DType::f64}, &g).to_vector<double>()) ts.push_back(t);
    double worst_trig = 0;
    for (double t : ts) {
      double s, c;
      rng_detail::sincos_turns(t, &s, &c);
      const long double a = 2.0L * kPiL * (long double)t;
      worst_trig = std::max(
          {worst_trig, std::fabs(s - double(std::sin(a))), std::fabs(c - double(std::cos(a)))});
    }
    CHECK(worst_trig < 1e-15);
    double s, c;
    rng_detail::sincos_turns(0.0, &s, &c);
    CHECK(s == 0.0);
    CHECK(c == 1.0);

    // box_muller composes the two
    double worst_bm = 0;
    for (size_t i = 0; i + 1 < us.size() && i < 2000; i += 2) {
      double n0, n1;
      rng_detail::box_muller(us[i], ts[i], &n0, &n1);
      worst_bm = std::max({worst_bm, std::fabs(n0 - box_muller_ref(us[i], ts[i], false)),
                           std::fabs(n1 - box_muller_ref(us[i], ts[i], true))});
    }
    CHECK(worst_bm < 1e-14);
  }

  TEST_CASE("batch shards: each rank's draw is its rows of the whole batch's draw") {
    struct Draw {
      const char* name;
      std::function<Tensor(const Shape&, Generator&)> f;
    };
    const std::vector<Draw> draws = {
        {"rand f32", [](const Shape& s, Generator& g) { return rand(s, {}, &g); }},
        {"randn f32", [](const Shape& s, Generator& g) { return randn(s, {}, &g); }},
        {"randn f64",
         [](const Shape& s, Generator& g) { return randn(s, {.dtype = DType::f64}, &g); }},
        {"randn f16",
         [](const Shape& s, Generator& g) { return randn(s, {.dtype = DType::f16}, &g); }},
        {"randint i64",
         [](const Shape& s, Generator& g) { return randint(0, 17, s, {.dtype = DType::i64}, &g); }},
        {"bernoulli f32", [](const Shape& s, Generator& g) { return bernoulli(s, 0.3, {}, &g); }}};
    // rows of 12 values (block-aligned shards), of 5 (shards inside a block), a single value
    for (const Shape& row : {Shape{3, 4}, Shape{5}, Shape{}}) {
      for (const Draw& d : draws) {
        for (int64_t k : {2, 3}) {
          CAPTURE(d.name);
          CAPTURE(k);
          Shape local = {2};
          local.insert(local.end(), row.begin(), row.end());
          Shape global = local;
          global[0] *= k;
          Generator g0(77, 5);
          const Tensor whole = d.f(global, g0);
          for (int64_t r = 0; r < k; ++r) {
            Generator g(77, 5);
            g.set_shard(r, k);
            const Tensor mine = d.f(local, g);
            CHECK(mine.shape() == local);
            CHECK(mine.to_vector<double>() == whole.narrow(0, 2 * r, 2).to_vector<double>());
            CHECK(g.offset() == g0.offset());  // every rank's state advances as the whole draw's
            {
              ShardGuard off(g, 0, 1);  // unsharded inside the guard, restored after
              CHECK(g.shard_count() == 1);
            }
            CHECK(g.shard_count() == k);
          }
        }
      }
    }
    Generator g(1);
    CHECK_THROWS_AS(g.set_shard(2, 2), cm::Error);
    CHECK_THROWS_AS(g.set_shard(0, 0), cm::Error);
  }
}  // TEST_SUITE
