// Element types: the DType enum, its properties and promotion, and the two 16-bit float formats
// (IEEE half and bfloat16) with round-to-nearest-even conversion. The conversions are plain
// bit manipulation marked CM_HD so that the CUDA backend compiles the very same functions:
// a value rounds to the same bits on both devices.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "tensor/error.h"

#if defined(__CUDACC__)
#define CM_HD __host__ __device__
#else
#define CM_HD
#endif

namespace cm {

enum class DType : uint8_t { f32, f64, f16, bf16, i32, i64, u8, b8 };
inline constexpr int kNumDTypes = 8;

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "f32", "f64", "f16", "bf16", "i32", "i64", "u8", "bool"
bool is_floating(DType t);        // f32, f64, f16, bf16
bool is_integral(DType t);        // i32, i64, u8 (not bool)
// The common type of two operands: bool < u8 < i32 < i64 < (f16 | bf16) < f32 < f64;
// f16 with bf16 gives f32, as in PyTorch.
DType promote_types(DType a, DType b);

namespace detail {
CM_HD inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
CM_HD inline float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
}  // namespace detail

// IEEE 754 binary16 <-> binary32.
CM_HD inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in f32
    float v = float(mant) * 5.9604644775390625e-8f;
    return detail::f32_from_bits(detail::f32_bits(v) | sign);
  }
  if (exp == 31) return detail::f32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / nan
  return detail::f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

CM_HD inline uint16_t float_to_half_bits(float f) {
  uint32_t x = detail::f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // quiet NaN
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Below 2^-14 the result is subnormal: adding 0.5 puts the value's bits at the half ulp
    // (2^-24) and the float adder rounds to nearest even for us.
    float r = detail::f32_from_bits(ax) + 0.5f;
    return uint16_t(sign | (detail::f32_bits(r) - 0x3f000000u));
  }
  uint32_t odd = (ax >> 13) & 1u;
  ax += 0xc8000fffu + odd;  // rebias exponent by -112, add the rounding bias (ties to even)
  return uint16_t(sign | (ax >> 13));
}

// bfloat16 <-> binary32: the upper 16 bits, rounded to nearest even.
CM_HD inline float bf16_bits_to_float(uint16_t b) {
  return detail::f32_from_bits(uint32_t(b) << 16);
}
CM_HD inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x = detail::f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

// Storage types for the 16-bit formats. Arithmetic happens in float: they convert implicitly.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  CM_HD Half(float f) : bits(float_to_half_bits(f)) {}
  CM_HD operator float() const { return half_bits_to_float(bits); }
  CM_HD static Half from_bits(uint16_t b) {
    Half h;
    h.bits = b;
    return h;
  }
};
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  CM_HD BFloat16(float f) : bits(float_to_bf16_bits(f)) {}
  CM_HD operator float() const { return bf16_bits_to_float(bits); }
  CM_HD static BFloat16 from_bits(uint16_t b) {
    BFloat16 h;
    h.bits = b;
    return h;
  }
};

// C++ type <-> DType.
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct dtype_of<Half> {
  static constexpr DType value = DType::f16;
};
template <>
struct dtype_of<BFloat16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr DType value = DType::u8;
};
template <>
struct dtype_of<bool> {
  static constexpr DType value = DType::b8;
};
template <class T>
inline constexpr DType dtype_v = dtype_of<T>::value;

// The type arithmetic is done in: float for the 16-bit formats, a wider integer for the narrow
// integers (results wrap on the store, as in PyTorch), the type itself otherwise.
template <class T>
struct compute_type {
  using type = T;
};
template <>
struct compute_type<Half> {
  using type = float;
};
template <>
struct compute_type<BFloat16> {
  using type = float;
};
template <>
struct compute_type<uint8_t> {
  using type = int32_t;
};
template <>
struct compute_type<int32_t> {
  using type = int64_t;
};
template <>
struct compute_type<bool> {
  using type = int32_t;
};
template <class T>
using compute_t = typename compute_type<T>::type;

// Value conversion between element types: to bool is `!= 0`, the 16-bit formats go through float.
template <class To, class From>
CM_HD inline To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) {
    return static_cast<compute_t<From>>(v) != compute_t<From>(0);
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(static_cast<float>(static_cast<compute_t<From>>(v)));
  } else {
    return static_cast<To>(static_cast<compute_t<From>>(v));
  }
}

}  // namespace cm

// CM_DISPATCH(dtype, "op", ...): runs the body with `scalar_t` bound to the C++ type of dtype.
// The _FLOAT form admits f32/f64/f16/bf16 only, _ALL every dtype; others fail naming the op.
#define CM_DISPATCH_CASE(E, T, ...) \
  case ::cm::DType::E: {            \
    using scalar_t = T;             \
    __VA_ARGS__();                  \
    break;                          \
  }

#define CM_DISPATCH_FLOAT(dt, opname, ...)                                                    \
  switch (dt) {                                                                               \
    CM_DISPATCH_CASE(f32, float, __VA_ARGS__)                                                 \
    CM_DISPATCH_CASE(f64, double, __VA_ARGS__)                                                \
    CM_DISPATCH_CASE(f16, ::cm::Half, __VA_ARGS__)                                            \
    CM_DISPATCH_CASE(bf16, ::cm::BFloat16, __VA_ARGS__)                                       \
    default:                                                                                  \
      CM_FAIL(opname, ": dtype ", ::cm::dtype_name(dt), " is not supported (floating only)"); \
  }

#define CM_DISPATCH_NUMERIC(dt, opname, ...)                                                 \
  switch (dt) {                                                                              \
    CM_DISPATCH_CASE(f32, float, __VA_ARGS__)                                                \
    CM_DISPATCH_CASE(f64, double, __VA_ARGS__)                                               \
    CM_DISPATCH_CASE(f16, ::cm::Half, __VA_ARGS__)                                           \
    CM_DISPATCH_CASE(bf16, ::cm::BFloat16, __VA_ARGS__)                                      \
    CM_DISPATCH_CASE(i32, int32_t, __VA_ARGS__)                                              \
    CM_DISPATCH_CASE(i64, int64_t, __VA_ARGS__)                                              \
    CM_DISPATCH_CASE(u8, uint8_t, __VA_ARGS__)                                               \
    default:                                                                                 \
      CM_FAIL(opname, ": dtype ", ::cm::dtype_name(dt), " is not supported (numeric only)"); \
  }

#define CM_DISPATCH_ALL(dt, opname, ...)                \
  switch (dt) {                                         \
    CM_DISPATCH_CASE(f32, float, __VA_ARGS__)           \
    CM_DISPATCH_CASE(f64, double, __VA_ARGS__)          \
    CM_DISPATCH_CASE(f16, ::cm::Half, __VA_ARGS__)      \
    CM_DISPATCH_CASE(bf16, ::cm::BFloat16, __VA_ARGS__) \
    CM_DISPATCH_CASE(i32, int32_t, __VA_ARGS__)         \
    CM_DISPATCH_CASE(i64, int64_t, __VA_ARGS__)         \
    CM_DISPATCH_CASE(u8, uint8_t, __VA_ARGS__)          \
    CM_DISPATCH_CASE(b8, bool, __VA_ARGS__)             \
    default:                                            \
      CM_FAIL(opname, ": unknown dtype");               \
  }
