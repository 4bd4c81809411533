// Element types (tensor/dtype.h): f16/bf16 conversions against known bit patterns, exhaustive round
// trips, an oracle for float→f16/bf16 rounding, dtype properties and promotion, and conversions
// between dtypes through tensors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "helpers.h"

using namespace cm;

namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The value of a half bit pattern from the IEEE 754 definition, in double.
double half_value(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(double(mant), -24);
  if (exp == 31) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  return sign * std::ldexp(double(1024 + mant), exp - 25);
}

bool half_is_nan(uint16_t h) {
  return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
}
bool bf16_is_nan(uint16_t b) {
  return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0;
}

// Reference float→f16: the nearest of the two neighbouring representable magnitudes (computed in
// double), ties to the even bit pattern. Infinity acts as the value 65536 (the next power of two
// above the largest half), which is how IEEE rounding overflows.
uint16_t ref_float_to_half(float f) {
  static const std::vector<double> mags = [] {
    std::vector<double> m;
    for (uint32_t h = 0; h <= 0x7bff; ++h) m.push_back(half_value(uint16_t(h)));
    m.push_back(65536.0);  // stands for 0x7c00 (inf)
    return m;
  }();
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (a >= 65536.0) return sign | 0x7c00;
  // largest index with mags[i] <= a
  const size_t hi = size_t(std::upper_bound(mags.begin(), mags.end(), a) - mags.begin());
  const size_t lo = hi - 1;
  if (mags[lo] == a) return uint16_t(sign | lo);
  const double dlo = a - mags[lo], dhi = mags[hi] - a;
  size_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return uint16_t(sign | pick);
}

// Reference float→bf16: the two bf16 neighbours of a float are its upper 16 bits and the next
// pattern (the float value of 0x7f80 for the top one is taken as 2^128), ties to even.
uint16_t ref_float_to_bf16(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffffu;
  const uint16_t lo = uint16_t(ax >> 16);
  const double a = double(from_bits(ax));
  const double vlo = double(from_bits(uint32_t(lo) << 16));
  if (a == vlo) return sign | lo;
  const uint16_t hi = uint16_t(lo + 1);
  const double vhi = hi == 0x7f80 ? std::ldexp(1.0, 128) : double(from_bits(uint32_t(hi) << 16));
  const double dlo = a - vlo, dhi = vhi - a;
  const uint16_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return sign | pick;
}

}  // namespace

TEST_SUITE("tensor") {
  TEST_CASE("f16 conversion of known values") {
    CHECK(float_to_half_bits(1.0f) == 0x3C00);
    CHECK(float_to_half_bits(-2.0f) == 0xC000);
    CHECK(float_to_half_bits(0.0f) == 0x0000);
    CHECK(float_to_half_bits(-0.0f) == 0x8000);
    CHECK(float_to_half_bits(65504.0f) == 0x7BFF);
    CHECK(float_to_half_bits(-65504.0f) == 0xFBFF);
    // 65520 is the midpoint between 65504 and the (virtual) 65536: ties to even → inf.
    CHECK(float_to_half_bits(65519.996f) == 0x7BFF);
    CHECK(float_to_half_bits(65520.0f) == 0x7C00);
    CHECK(float_to_half_bits(-65520.0f) == 0xFC00);
    CHECK(float_to_half_bits(1e6f) == 0x7C00);
    CHECK(float_to_half_bits(INFINITY) == 0x7C00);
    CHECK(float_to_half_bits(-INFINITY) == 0xFC00);
    CHECK(float_to_half_bits(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
    CHECK(float_to_half_bits(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
    CHECK(float_to_half_bits(-std::ldexp(1.0f, -24)) == 0x8001);
    CHECK(float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and 1 → even (0)
    CHECK(float_to_half_bits(-std::ldexp(1.0f, -25)) == 0x8000);
    CHECK(float_to_half_bits(std::ldexp(1.0f, -25) * 1.0001f) == 0x0001);
    CHECK(float_to_half_bits(3 * std::ldexp(1.0f, -25)) == 0x0002);  // tie between 1 and 2 → 2
    CHECK(float_to_half_bits(5 * std::ldexp(1.0f, -25)) == 0x0002);  // tie between 2 and 3 → 2
    CHECK(float_to_half_bits(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)) ==
          0x0400);  // to normal
    // ties to even in the normal range (ulp of 1 is 2^-10)
    CHECK(float_to_half_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
    CHECK(float_to_half_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);
    CHECK(float_to_half_bits(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)) == 0x3C01);
    CHECK(float_to_half_bits(2047.0f + 0.5f) == 0x67FF + 1);  // 2047.5 → 2048 (even)
    CHECK(float_to_half_bits(0.1f) == 0x2E66);

    CHECK(half_bits_to_float(0x3C00) == 1.0f);
    CHECK(half_bits_to_float(0x7BFF) == 65504.0f);
    CHECK(half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
    CHECK(half_bits_to_float(0x03FF) == 1023 * std::ldexp(1.0f, -24));
    CHECK(half_bits_to_float(0x7C00) == INFINITY);
    CHECK(half_bits_to_float(0xFC00) == -INFINITY);
    const float nz = half_bits_to_float(0x8000);
    CHECK(nz == 0.0f);
    CHECK(std::signbit(nz));
    CHECK(std::signbit(half_bits_to_float(0x8001)));

    // NaN stays NaN and becomes quiet.
    for (float nan :
         {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
          from_bits(0x7f800001u), from_bits(0xffa00000u)}) {
      const uint16_t h = float_to_half_bits(nan);
      CHECK(half_is_nan(h));
      CHECK((h & 0x0200) != 0);
    }
    CHECK(std::isnan(half_bits_to_float(0x7E00)));
    CHECK(std::isnan(half_bits_to_float(0x7C01)));
    CHECK(std::isnan(float(Half::from_bits(0xFE00))));
    CHECK(Half(1.5f).bits == 0x3E00);
  }

  TEST_CASE("bf16 conversion of known values") {
    CHECK(float_to_bf16_bits(1.0f) == 0x3F80);
    CHECK(float_to_bf16_bits(-1.0f) == 0xBF80);
    CHECK(float_to_bf16_bits(0.0f) == 0x0000);
    CHECK(float_to_bf16_bits(-0.0f) == 0x8000);
    CHECK(float_to_bf16_bits(INFINITY) == 0x7F80);
    CHECK(float_to_bf16_bits(-INFINITY) == 0xFF80);
    // ulp of 1 is 2^-7: ties to even
    CHECK(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);
    CHECK(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);
    CHECK(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)) == 0x3F81);
    // the largest finite float rounds up to inf; the largest bf16 stays
    CHECK(float_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7F80);
    CHECK(float_to_bf16_bits(from_bits(0x7F7F0000u)) == 0x7F7F);
    CHECK(float_to_bf16_bits(from_bits(0x7F7F7FFFu)) == 0x7F7F);
    CHECK(float_to_bf16_bits(from_bits(0x7F7F8000u)) == 0x7F80);  // tie, 0x7F7F is odd → up
    // subnormal floats keep their upper bits
    CHECK(float_to_bf16_bits(from_bits(0x00010000u)) == 0x0001);
    CHECK(float_to_bf16_bits(from_bits(0x00008000u)) == 0x0000);  // tie → even
    CHECK(float_to_bf16_bits(from_bits(0x00018000u)) == 0x0002);

    CHECK(bf16_bits_to_float(0x3F80) == 1.0f);
    CHECK(bf16_bits_to_float(0x7F80) == INFINITY);
    CHECK(bf16_bits_to_float(0xFF80) == -INFINITY);
    CHECK(std::signbit(bf16_bits_to_float(0x8000)));
    CHECK(bf16_bits_to_float(0x4049) == 3.140625f);

    for (float nan :
         {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
          from_bits(0x7f800001u), from_bits(0x7fffffffu), from_bits(0xff800001u)}) {
      const uint16_t b = float_to_bf16_bits(nan);
      CHECK(bf16_is_nan(b));
      CHECK((b & 0x0040) != 0);
    }
    CHECK(std::isnan(bf16_bits_to_float(0x7FC0)));
    CHECK(std::isnan(float(BFloat16::from_bits(0x7F81))));
  }

  TEST_CASE("every non-NaN f16 bit pattern round-trips exactly") {
    int checked = 0, bad = 0;
    for (uint32_t h = 0; h <= 0xffff; ++h) {
      const uint16_t b = uint16_t(h);
      const float f = half_bits_to_float(b);
      if (half_is_nan(b)) {
        CHECK(std::isnan(f));
        CHECK(half_is_nan(float_to_half_bits(f)));
        continue;
      }
      // the float is the exact value of the pattern
      if (!(double(f) == half_value(b) && std::signbit(f) == bool(b & 0x8000))) ++bad;
      if (float_to_half_bits(f) != b) ++bad;
      ++checked;
    }
    CHECK(checked == 65536 - 2 * 1023);
    CHECK(bad == 0);
  }

  TEST_CASE("every bf16 bit pattern round-trips exactly (NaNs stay NaN)") {
    int bad = 0;
    for (uint32_t h = 0; h <= 0xffff; ++h) {
      const uint16_t b = uint16_t(h);
      const float f = bf16_bits_to_float(b);
      if (bf16_is_nan(b)) {
        if (!std::isnan(f) || !bf16_is_nan(float_to_bf16_bits(f))) ++bad;
        // a quiet NaN keeps its exact bits
        if ((b & 0x40) && float_to_bf16_bits(f) != b) ++bad;
        continue;
      }
      if (bits_of(f) != uint32_t(b) << 16) ++bad;
      if (float_to_bf16_bits(f) != b) ++bad;
    }
    CHECK(bad == 0);
  }

  TEST_CASE("float to f16 and bf16 rounding matches a brute-force reference") {
    std::mt19937 rng(1234);
    std::vector<float> xs;
    // exponents from far below the f16 subnormals (2^-24) to above the f16 range, random mantissas
    std::uniform_int_distribution<uint32_t> exp_dist(127 - 30, 127 + 18), mant(0, 0x7fffff),
        sgn(0, 1);
    for (int i = 0; i < 80000; ++i)
      xs.push_back(from_bits((sgn(rng) << 31) | (exp_dist(rng) << 23) | mant(rng)));
    // arbitrary bit patterns (all float exponents, NaNs excluded below)
    for (int i = 0; i < 20000; ++i) xs.push_back(from_bits(uint32_t(rng())));
    // every exact midpoint between two neighbouring halves (ties), and their float neighbours
    int inexact_midpoints = 0;
    for (uint32_t h = 0; h < 0x7bff; ++h) {
      const float mid = float((half_value(uint16_t(h)) + half_value(uint16_t(h + 1))) / 2);
      if (double(mid) * 2 != half_value(uint16_t(h)) + half_value(uint16_t(h + 1)))
        ++inexact_midpoints;
      xs.push_back(mid);
      xs.push_back(std::nextafter(mid, 0.0f));
      xs.push_back(std::nextafter(mid, INFINITY));
    }
    CHECK(inexact_midpoints == 0);  // the ties are exact floats
    xs.push_back(65520.0f);
    xs.push_back(std::nextafter(65520.0f, 0.0f));

    int bad_half = 0, bad_bf16 = 0, n = 0;
    for (float f : xs) {
      if (std::isnan(f)) continue;
      ++n;
      const uint16_t got = float_to_half_bits(f), want = ref_float_to_half(f);
      if (got != want && bad_half++ < 5)
        MESSAGE("f16: ", f, " (bits ", bits_of(f), ") -> ", got, ", expected ", want);
      const uint16_t gotb = float_to_bf16_bits(f), wantb = ref_float_to_bf16(f);
      if (gotb != wantb && bad_bf16++ < 5)
        MESSAGE("bf16: ", f, " (bits ", bits_of(f), ") -> ", gotb, ", expected ", wantb);
    }
    CHECK(n > 190000);
    CHECK(bad_half == 0);
    CHECK(bad_bf16 == 0);
  }

  TEST_CASE("dtype properties") {
    const DType all[] = {DType::f32, DType::f64, DType::f16, DType::bf16,
                         DType::i32, DType::i64, DType::u8,  DType::b8};
    const size_t sizes[] = {4, 8, 2, 2, 4, 8, 1, 1};
    const char* names[] = {"f32", "f64", "f16", "bf16", "i32", "i64", "u8", "bool"};
    const bool floating[] = {true, true, true, true, false, false, false, false};
    const bool integral[] = {false, false, false, false, true, true, true, false};
    for (int i = 0; i < kNumDTypes; ++i) {
      CAPTURE(i);
      CHECK(dtype_size(all[i]) == sizes[i]);
      CHECK(std::string(dtype_name(all[i])) == names[i]);
      CHECK(is_floating(all[i]) == floating[i]);
      CHECK(is_integral(all[i]) == integral[i]);
    }
    CHECK(sizeof(Half) == 2);
    CHECK(sizeof(BFloat16) == 2);
    CHECK(dtype_v<Half> == DType::f16);
    CHECK(dtype_v<bool> == DType::b8);
  }

  TEST_CASE("promote_types follows bool < u8 < i32 < i64 < f16|bf16 < f32 < f64") {
    const DType all[] = {DType::b8,  DType::u8,   DType::i32, DType::i64,
                         DType::f16, DType::bf16, DType::f32, DType::f64};
    auto rank = [](DType t) {
      switch (t) {
        case DType::b8:
          return 0;
        case DType::u8:
          return 1;
        case DType::i32:
          return 2;
        case DType::i64:
          return 3;
        case DType::f16:
          return 4;
        case DType::bf16:
          return 4;
        case DType::f32:
          return 5;
        case DType::f64:
          return 6;
      }
      return -1;
    };
    for (DType a : all) {
      for (DType b : all) {
        CAPTURE(std::string(dtype_name(a)));
        CAPTURE(std::string(dtype_name(b)));
        DType want;
        if (a == b)
          want = a;
        else if (rank(a) == 4 && rank(b) == 4)
          want = DType::f32;
        else
          want = rank(a) > rank(b) ? a : b;
        CHECK(promote_types(a, b) == want);
        CHECK(promote_types(b, a) == promote_types(a, b));
      }
    }
    // a few spelled out
    CHECK(promote_types(DType::f16, DType::bf16) == DType::f32);
    CHECK(promote_types(DType::i64, DType::f16) == DType::f16);
    CHECK(promote_types(DType::b8, DType::u8) == DType::u8);
    CHECK(promote_types(DType::i32, DType::f64) == DType::f64);
  }

  TEST_CASE("dtype conversions through tensors") {
    const std::vector<float> v = {-2.75f, -1.5f, -0.0f, 0.0f, 0.25f, 1.5f, 2.999f, 100.0f};
    Tensor t = from_vector(v, {8});

    SUBCASE("float to integers truncates toward zero") {
      std::vector<int32_t> want;
      for (float x : v) want.push_back(int32_t(std::trunc(x)));
      CHECK(t.to(DType::i32).to_vector<int32_t>() == want);
      std::vector<int64_t> want64(want.begin(), want.end());
      CHECK(t.to(DType::i64).to_vector<int64_t>() == want64);
      CHECK(t.to(DType::i32).dtype() == DType::i32);
    }
    SUBCASE("to bool is x != 0 (NaN is true, -0 is false)") {
      Tensor n = from_vector(std::vector<float>{0.0f, -0.0f, 1e-30f, -3.0f, NAN, INFINITY}, {6});
      CHECK(n.to(DType::b8).to_vector<bool>() ==
            std::vector<bool>{false, false, true, true, true, true});
      Tensor i = from_vector(std::vector<int64_t>{0, 5, -1}, {3});
      CHECK(i.to(DType::b8).to_vector<bool>() == std::vector<bool>{false, true, true});
    }
    SUBCASE("bool and u8 to float") {
      Tensor b = from_vector(std::vector<bool>{true, false, true}, {3}, {.dtype = DType::b8});
      CHECK(b.to(DType::f32).to_vector<float>() == std::vector<float>{1, 0, 1});
      CHECK(b.to(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
      Tensor u = from_vector(std::vector<uint8_t>{0, 7, 255}, {3});
      CHECK(u.to(DType::f64).to_vector<double>() == std::vector<double>{0, 7, 255});
      CHECK(u.to(DType::i32).to_vector<int32_t>() == std::vector<int32_t>{0, 7, 255});
    }
    SUBCASE("to f16 / bf16 rounds to nearest even, back to f32 is exact") {
      const std::vector<float> w = {1.0f + std::ldexp(1.0f, -11),
                                    1.0f + 3 * std::ldexp(1.0f, -11),
                                    65520.0f,
                                    std::ldexp(1.0f, -25),
                                    0.1f,
                                    -7.3f};
      Tensor tw = from_vector(w, {6});
      std::vector<Half> h = tw.to(DType::f16).to_vector<Half>();
      std::vector<BFloat16> bf = tw.to(DType::bf16).to_vector<BFloat16>();
      std::vector<float> back = tw.to(DType::f16).to(DType::f32).to_vector<float>();
      for (size_t i = 0; i < w.size(); ++i) {
        CHECK(h[i].bits == ref_float_to_half(w[i]));
        CHECK(bf[i].bits == ref_float_to_bf16(w[i]));
        CHECK(bits_of(back[i]) == bits_of(half_bits_to_float(ref_float_to_half(w[i]))));
      }
      // f16 → bf16 goes through float
      std::vector<BFloat16> hb = tw.to(DType::f16).to(DType::bf16).to_vector<BFloat16>();
      for (size_t i = 0; i < w.size(); ++i)
        CHECK(hb[i].bits == ref_float_to_bf16(half_bits_to_float(ref_float_to_half(w[i]))));
    }
    SUBCASE("non-contiguous source") {
      Tensor m =
          from_vector(std::vector<double>{1.9, -2.9, 3.5, -4.5, 5.1, 6.0}, {2, 3}).transpose(0, 1);
      CHECK(!m.is_contiguous());
      CHECK(m.to(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{1, -4, -2, 5, 3, 6});
    }
    SUBCASE("to the same dtype is the tensor itself") {
      CHECK(t.to(DType::f32).same(t));
    }
  }

}  // TEST_SUITE
